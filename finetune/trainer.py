"""Training: TRL's SFTTrainer on the assembled rows, labels used exactly as given.

`skip_prepare_dataset` keeps TRL from re-tokenizing, truncating or re-masking; our `RowCollator` replaces
TRL's (it pads and writes position ids from `seq_lengths`); `remove_unused_columns=False` keeps `seq_lengths`
alive until the collator. TRL still supplies its fused, tiled LM head (log-probs only at positions with a
label, so 32k x vocab logits are never materialised), LoRA via PEFT, and the Trainer loop (cosine schedule,
warm-up, gradient accumulation, checkpoints, resume, accelerate/FSDP launch).
The model is loaded with trust_remote_code and its config is never edited: an ABF or xPos checkpoint keeps
its RoPE settings.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from finetune.collate import RowCollator
from finetune.config import FinetuneConfig
from longscale.common.checkpoints import latest_checkpoint as find_latest
from longscale.common.plotting import plot_curve
from longscale.common.progress import is_terminal
from pretrain.step_in_backward import check_step_in_backward

log = logging.getLogger(__name__)


def use_bf16(config: FinetuneConfig) -> bool:
    if config.bf16 is not None:
        return config.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def load_model(config: FinetuneConfig):
    """The model to finetune, through pretrain's loader (an xPos checkpoint gets this package's classes)."""
    from pretrain.attention import attn_implementation
    from pretrain.modeling import load_model as load_checkpoint

    dtype = torch.bfloat16 if use_bf16(config) else torch.float32
    return load_checkpoint(config.model, trust_remote_code=True, dtype=dtype,
                           attn_implementation=attn_implementation(config.attention.attn_implementation))


def accumulation_steps(config: FinetuneConfig, row_tokens: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that one step sees about `batch_tokens` tokens."""
    per_micro = config.per_device_rows * row_tokens * world_size
    return max(1, math.ceil(config.batch_tokens / per_micro))


def fsdp_checkpoints_activations() -> bool:
    """True under `accelerate launch` with FSDP's own activation checkpointing (configs/fsdp/*.yaml): the Trainer
    refuses both at once, so that setting wins over --gradient-checkpointing (which still governs a plain launch)."""
    on = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and \
        os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() == "true"
    if on:
        log.info("FSDP activation checkpointing is on: the model's own gradient checkpointing stays off")
    return on


def sft_args(config: FinetuneConfig, row_tokens: int):
    from trl import SFTConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    kwargs: dict[str, Any] = dict(
        output_dir=str(Path(config.output) / "checkpoints"),
        per_device_train_batch_size=config.per_device_rows,
        gradient_accumulation_steps=accumulation_steps(config, row_tokens, world),
        learning_rate=config.optimizer.learning_rate, lr_scheduler_type="cosine", warmup_steps=config.optimizer.warmup_ratio,
        weight_decay=config.optimizer.weight_decay, max_grad_norm=config.optimizer.grad_clip, num_train_epochs=config.epochs, max_steps=config.max_steps,
        bf16=use_bf16(config),
        torch_compile=config.compiler.torch_compile == "model", save_steps=config.checkpointing.save_steps, save_total_limit=config.checkpointing.save_total_limit,
        logging_steps=config.logging_steps, seed=config.seed, report_to="none", remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True}, max_length=None, length_column_name="length",
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        # off a terminal the Trainer's redrawing bar gives way to its PrinterCallback: one log line per logging step
        disable_tqdm=not is_terminal(sys.stderr),
    )
    # the older name: TRL 1.16 reads `args.gradient_checkpointing`, and transformers 5.17 has only it; selective
    # checkpointing is set on the model itself (build_trainer), the Trainer would turn it on for every layer
    kwargs["gradient_checkpointing"] = (config.gradient_checkpointing and config.ckpt_every_layers == 1
                                        and not fsdp_checkpoints_activations())
    if config.pad_to == "bucket" and config.per_device_rows > 1:
        kwargs["train_sampling_strategy"] = "group_by_length"
    return SFTConfig(**kwargs)


def compile_mode(config: FinetuneConfig) -> str:
    if config.compiler.torch_compile == "auto":
        return "layers" if torch.cuda.is_available() else "off"
    return config.compiler.torch_compile


def lora_config(config: FinetuneConfig):
    if not config.lora_r:
        return None
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.lora_targets,
                      lora_dropout=0.0, task_type="CAUSAL_LM")


def build_trainer(config: FinetuneConfig, dataset, tokenizer, model=None, callbacks=()):
    """An SFTTrainer ready to `.train()`; `model` may be passed in (benchmarks use random-initialised ones)."""
    from trl import SFTTrainer

    if model is None:
        model = load_model(config)
    else:  # a model built by the caller (benchmarks, tests) gets the configured kernel too
        from pretrain.attention import attn_implementation

        model.set_attn_implementation(attn_implementation(config.attention.attn_implementation))
    if config.gradient_checkpointing and config.ckpt_every_layers > 1 and not fsdp_checkpoints_activations():
        from pretrain.trainer import configure_checkpointing

        configure_checkpointing(model, "selective", config.ckpt_every_layers)
    if compile_mode(config) == "layers":
        from pretrain.compile import compile_decoder_layers

        log.info("torch.compile: %d decoder layers", compile_decoder_layers(model))
    row_tokens = max(dataset["length"]) if len(dataset) else config.pack_length
    args = sft_args(config, row_tokens)
    trainer_class = SFTTrainer
    if config.optimizer.step_in_backward:
        check_step_in_backward(
            accumulation=args.gradient_accumulation_steps, grad_clip=config.optimizer.grad_clip,
            world=int(os.environ.get("WORLD_SIZE", "1")),
            detail=f"--batch-tokens {config.batch_tokens} makes {args.gradient_accumulation_steps} micro-batches of "
                   f"{config.per_device_rows} x {row_tokens} tokens a step: set it to at most "
                   f"{config.per_device_rows * row_tokens} or raise --per-device-rows")
        trainer_class = step_in_backward_trainer(config.optimizer.offload_optimizer_state)
    return trainer_class(model=model, args=args, train_dataset=dataset,
                      processing_class=tokenizer, peft_config=lora_config(config),
                      data_collator=RowCollator(tokenizer.pad_token_id, config.pack_attention == "per-sample"),
                      callbacks=list(callbacks))


def step_in_backward_trainer(offload: bool = False):
    """SFTTrainer whose optimizer (the one the Trainer builds: its groups, fused AdamW, weight decay) steps each
    parameter inside the backward pass (pretrain/step_in_backward.py). The Trainer's loop is unchanged: its
    `optimizer.step()` is a no-op, its cosine scheduler sets the groups' lr that each parameter's step reads, and
    its optimizer.pt checkpoints have the plain AdamW layout (a run resumes with or without the flag). `offload`:
    the moments live in host memory between steps (--offload-optimizer-state)."""
    from trl import SFTTrainer

    from pretrain.step_in_backward import StepInBackward

    class StepInBackwardSFTTrainer(SFTTrainer):
        def create_optimizer(self, model=None):
            # older Trainers define create_optimizer(self) only (the device image has transformers 5.17)
            optimizer = super().create_optimizer() if model is None else super().create_optimizer(model)
            if not isinstance(optimizer, StepInBackward):
                self.optimizer = StepInBackward(optimizer, offload_state=offload)
            return self.optimizer

        def _get_grad_norm(self, model, grad_norm=None):  # the gradients are gone: the norm measured in backward
            inner = getattr(self.optimizer, "optimizer", self.optimizer)  # under accelerate's AcceleratedOptimizer
            return inner.grad_norm() if isinstance(inner, StepInBackward) else super()._get_grad_norm(model, grad_norm)

    return StepInBackwardSFTTrainer


def latest_checkpoint(output: str) -> str | None:
    """The newest `checkpoint-N` folder the Trainer wrote under output/checkpoints."""
    found = find_latest(Path(output, "checkpoints"), "checkpoint-")
    return str(found) if found else None


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    points = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    return plot_curve(points, path, title="finetune loss", xlabel="optimizer step", ylabel="training loss",
                      size=(6, 3.5), marker="o" if len(points) < 30 else None)


def train(config: FinetuneConfig, dataset, tokenizer, model=None) -> dict[str, Any]:
    """Train, save the final model (LoRA merged into it) and the loss curve; return losses and paths."""
    from longscale.common.errors import ConfigError
    from pretrain.saving import restore_dropped_config

    resume_from = None
    if config.checkpointing.resume:
        resume_from = latest_checkpoint(config.output)
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint under {Path(config.output) / 'checkpoints'}")
        log.info("resuming from %s", resume_from)
    trainer = build_trainer(config, dataset, tokenizer, model=model)
    result = trainer.train(resume_from_checkpoint=resume_from)
    output = Path(config.output)
    final = output / "final"
    if not config.lora_r:
        trainer.save_model(str(final))  # gathers FSDP shards; writes the tokenizer too
    else:
        trainer.save_model(str(output / "adapter"))
        if trainer.is_world_process_zero():  # the merged copy loads anywhere (vLLM, transformers) without peft
            trainer.model.merge_and_unload().save_pretrained(str(final))
            tokenizer.save_pretrained(str(final))
    history = trainer.state.log_history
    curve = None
    if trainer.is_world_process_zero():
        restore_dropped_config(final)  # an ABF checkpoint stays ABF for vLLM too
        (output / "train_log.json").write_text(json.dumps(history, indent=1))
        curve = plot_loss(history, output / "loss_curve.png")
    return {"losses": [h["loss"] for h in history if "loss" in h], "global_step": trainer.state.global_step,
            "train_runtime_s": result.metrics.get("train_runtime"), "final_model": str(final),
            "loss_curve": str(curve) if curve else None, "train_log": str(output / "train_log.json"),
            "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps}
