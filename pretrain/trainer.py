"""The continual pretrainer: a plain torch loop over one single-device model (torchtitan style).

Per optimizer step the same number of tokens is seen at every sequence length: micro-batch and
accumulation are derived from `tokens_per_step`, the current curriculum length and the world size.
bf16 compute (autocast over fp32 or bf16 parameters), SDPA attention, optional full or selective
activation checkpointing, per-layer torch.compile, fused AdamW, chunked cross-entropy, warm-up +
cosine schedule, atomic checkpoints with exact resume, a progress bar with loss and tokens/s,
metrics.jsonl and loss_curve.png. Under torchrun, `pretrain.distributed` shards it with FSDP2.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from longscale.common.outputs import OutputFolderError, check_output_folder, recipe_differences, refuse_changed_recipe
from longscale.common.plotting import plot_curve
from longscale.common.tokenizers import load_tokenizer
from pretrain import distributed
from pretrain.checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint, set_rng_state
from pretrain.config import PretrainConfig
from pretrain.data import build_stream, parse_curriculum, seq_len_at
from pretrain.loss import chunked_lm_loss
from pretrain.step_in_backward import StepInBackward, check_step_in_backward

log = logging.getLogger(__name__)
RUN_MARKERS = ("summary.json", "metrics.jsonl", "checkpoints", "final")
# settings that change how a run executes, not what it trains: a resume may change them
RUN_KNOBS = {"output", "resume", "overwrite", "save_steps", "save_total_limit", "device", "max_steps",
             "gradient_checkpointing", "ckpt_every_layers", "attn_implementation", "torch_compile", "max_micro_batch",
             "loss_chunk_tokens", "step_in_backward", "offload_optimizer_state",
             "save_every", "keep_checkpoints", "grad_ckpt", "attn", "compile"}  # the last: as saved before 0.2


def step_shape(tokens_per_step: int, seq_len: int, max_micro_batch: int, world: int = 1) -> tuple[int, int]:
    """(micro_batch, accumulation) so that micro_batch * accumulation * seq_len * world == tokens_per_step."""
    sequences = tokens_per_step // seq_len
    if sequences * seq_len != tokens_per_step or sequences % world:
        raise ValueError(f"tokens_per_step {tokens_per_step} must be a multiple of seq_len {seq_len} x world {world}")
    per_rank = sequences // world
    micro = max(d for d in range(1, min(max_micro_batch, per_rank) + 1) if per_rank % d == 0)
    return micro, per_rank // micro


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Linear warm-up to 1, then cosine down to `min_ratio` at `total` steps."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def clipped_warmup(warmup_steps: int, total_steps: int) -> int:
    """The warm-up actually used: a warm-up longer than the run (the lr would never reach its peak) is cut
    to a tenth of the run, with a warning that says so."""
    if warmup_steps < total_steps:
        return warmup_steps
    clipped = total_steps // 10
    log.warning("--warmup-steps %d is not shorter than the run (%d steps): the learning rate would never reach "
                "its peak; warming up for %d steps instead", warmup_steps, total_steps, clipped)
    return clipped


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_checkpointing(model, mode: str, every: int) -> None:
    """full: every decoder layer recomputes; selective: every `every`-th; none: off."""
    if mode == "none":
        return
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if mode == "selective":
        for i, layer in enumerate(model.model.layers):
            layer.gradient_checkpointing = i % every == 0


def build_optimizer(model, cfg: PretrainConfig, device: torch.device):
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optimizer.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.optimizer.learning_rate, betas=(0.9, 0.95), eps=1e-8, fused=fused, foreach=None if fused else False)


def step_in_backward(optimizer, cfg: PretrainConfig, stages: list[tuple[int, float]], world: int) -> StepInBackward:
    """`optimizer` stepped inside the backward pass, refused (ConfigError) where some curriculum stage would
    accumulate micro-batches, with gradient clipping, or on several ranks."""
    for length, _ in stages:
        micro, accum = step_shape(cfg.tokens_per_step, length, cfg.max_micro_batch, world)
        if accum > 1:
            check_step_in_backward(
                accumulation=accum, grad_clip=cfg.optimizer.grad_clip, world=world,
                detail=f"--tokens-per-step {cfg.tokens_per_step} at length {length} needs {accum} micro-batches of "
                       f"{micro}: set --max-micro-batch to at least {cfg.tokens_per_step // length // world}")
    check_step_in_backward(accumulation=1, grad_clip=cfg.optimizer.grad_clip, world=world)
    return StepInBackward(optimizer, offload_state=cfg.optimizer.offload_optimizer_state)


class CausalLMLoss(torch.nn.Module):
    """Mean next-token loss through the base model + chunked cross-entropy (no full logits).

    A module (not a function) so that FSDP's root hooks gather the embedding/output weights it uses."""

    def __init__(self, model, chunk: int, compute_dtype: torch.dtype):
        super().__init__()
        self.model, self.chunk, self.compute_dtype = model, chunk, compute_dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return chunked_lm_loss(hidden, self.model.lm_head.weight, input_ids, chunk=self.chunk,
                               compute_dtype=self.compute_dtype)


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    plot_curve([(h["tokens"] / 1e6, h["loss"]) for h in history], path, title=title, xlabel="tokens (M)",
               ylabel="training loss", lw=1)


class Pretrainer:
    """Owns one run: model, optimizer, schedule, data stream and checkpoints."""

    def __init__(self, cfg: PretrainConfig, *, show_progress: bool = True):
        from pretrain.attention import Hardware, attn_implementation
        from pretrain.compile import compile_decoder_layers
        from pretrain.modeling import load_model, load_variant_model

        self.cfg, self.show_progress = cfg, show_progress
        self.out = check_output_folder(cfg.output, resume=cfg.checkpointing.resume, overwrite=cfg.overwrite, markers=RUN_MARKERS,
                                       what="pretraining run")
        resume_from, state = self._checkpoint_to_resume()
        self.rank, self.world, local = distributed.init()
        self.device = resolve_device(cfg.device)
        if self.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", local)
        self.stages = parse_curriculum(cfg.curriculum, cfg.seq_len)
        self.max_len = max(length for length, _ in self.stages)
        self.total_steps = cfg.total_tokens // cfg.tokens_per_step  # whole steps within the budget
        self.warmup_steps = clipped_warmup(cfg.optimizer.warmup_steps, self.total_steps)
        self.compute_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        param_dtype = torch.bfloat16 if cfg.param_dtype == "bf16" else torch.float32
        torch.manual_seed(cfg.seed)

        load_kw = dict(dtype=param_dtype, attn_implementation=attn_implementation(cfg.attention.attn_implementation, Hardware.detect(self.device)))
        if resume_from:
            self.model = load_model(resume_from, **load_kw)
        else:
            self.model = load_variant_model(cfg.model, cfg.variant, base=cfg.rope.rope_base, seq_len=self.max_len, **load_kw)
        self.tokenizer = load_tokenizer(str(resume_from or cfg.model), flag="--model")
        self.model.config.use_cache = False
        self.model.to(self.device).train()
        configure_checkpointing(self.model, cfg.gradient_checkpointing, cfg.ckpt_every_layers)
        if cfg.compiler.torch_compile == "layers":
            compile_decoder_layers(self.model)
        self.loss_fn = distributed.wrap(CausalLMLoss(self.model, cfg.loss_chunk_tokens, self.compute_dtype),
                                        self.model.model.layers, self.world)
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        if cfg.optimizer.step_in_backward:
            self.optimizer = step_in_backward(self.optimizer, cfg, self.stages, self.world)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.warmup_steps, self.total_steps, cfg.optimizer.min_lr_ratio))
        self.stream = build_stream(cfg.source, self.tokenizer, seed=cfg.seed, long_doc_tokens=cfg.long_doc_tokens,
                                   long_upsample=cfg.long_upsample, show_progress=show_progress and self.rank == 0)
        self.step, self.tokens, self.history = 0, 0, []
        if resume_from and state is not None:
            distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"], self.world)
            self.scheduler.load_state_dict(state["scheduler"])
            self.stream.load_state_dict(state["data"])
            self.step, self.tokens, self.history = state["step"], state["tokens"], state["history"]
            set_rng_state(state["rng"])
            log.info("resumed from %s at step %d (%d tokens)", resume_from, self.step, self.tokens)
        self.resumed_from = resume_from

    def _checkpoint_to_resume(self) -> tuple[Path | None, dict | None]:
        """(newest checkpoint, its trainer state) under --resume, refused when its recipe settings differ."""
        if not self.cfg.checkpointing.resume:
            return None, None
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            raise OutputFolderError(f"--resume: no checkpoint under {self.out / 'checkpoints'} (start without --resume)")
        state = load_trainer_state(ckpt)
        refuse_changed_recipe(recipe_differences(state.get("config", {}), self.cfg.model_dump(), RUN_KNOBS), ckpt)
        return ckpt, state

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> dict:
        cfg = self.cfg
        seq_len = seq_len_at(self.stages, self.tokens, cfg.total_tokens)
        micro, accum = step_shape(cfg.tokens_per_step, seq_len, cfg.max_micro_batch, self.world)
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(accum):
            batch = distributed.take_batch(self.stream, micro, seq_len, self.rank, self.world).to(self.device)
            with self._autocast():
                loss = self.loss_fn(batch) / accum
            loss.backward()
            loss_sum += loss.detach()
        if isinstance(self.optimizer, StepInBackward):  # stepped and freed in backward: the norm measured there
            grad_norm = self.optimizer.grad_norm()
        elif cfg.optimizer.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optimizer.grad_clip)
        else:
            grad_norm = torch.zeros(())
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = distributed.mean(loss_sum, self.world).item()
        elapsed = time.perf_counter() - started
        self.step += 1
        self.tokens += cfg.tokens_per_step
        record = {"step": self.step, "tokens": self.tokens, "seq_len": seq_len, "micro_batch": micro,
                  "accumulation": accum, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                  "tokens_per_s": cfg.tokens_per_step / elapsed}
        self.history.append(record)
        return record

    def save(self) -> Path | None:
        model_state, optim_state = distributed.full_state(self.model, self.optimizer, self.world)
        state = {"optimizer": optim_state, "scheduler": self.scheduler.state_dict(),
                 "data": self.stream.state_dict(), "step": self.step, "tokens": self.tokens,
                 "history": self.history, "config": self.cfg.model_dump()}
        if self.rank != 0:
            return None
        return save_checkpoint(self.out, self.step, self.model, self.tokenizer, state,
                               keep=self.cfg.checkpointing.save_total_limit, model_state=model_state)

    def _write_metrics(self) -> None:
        with open(self.out / "metrics.jsonl", "w") as fh:
            for rec in self.history:
                fh.write(json.dumps(rec) + "\n")

    def run(self) -> dict:
        from longscale.common.progress import progress as progress_bar

        cfg = self.cfg
        last = min(self.total_steps, cfg.max_steps or self.total_steps)
        bar = progress_bar(total=last, initial=self.step, desc="pretrain", unit="step",
                   disable=not self.show_progress or self.rank != 0)
        try:
            while self.step < last:
                rec = self.train_step()
                bar.set_postfix(loss=f"{rec['loss']:.4f}", seq=rec["seq_len"], tok_s=f"{rec['tokens_per_s']:.0f}",
                                lr=f"{rec['lr']:.2e}")
                bar.update(1)
                if cfg.checkpointing.save_steps and self.step % cfg.checkpointing.save_steps == 0 and self.step < last:
                    self.save()
                    self._write_metrics()
        finally:
            bar.close()
            if self.rank == 0:
                self._write_metrics()
                plot_loss(self.history, self.out / "loss_curve.png", f"{cfg.variant} @ {self.max_len}")
        self.save()
        self._final_state = distributed.full_state(self.model, None, self.world)[0]
        if self.rank == 0:
            final = self.out / "final"
            from pretrain.saving import save_hf

            save_hf(self.model, final, self.tokenizer, state_dict=self._final_state)
        summary = {"steps": self.step, "tokens": self.tokens, "warmup_steps": self.warmup_steps, "final_loss": self.history[-1]["loss"] if self.history else None,
                   "output": str(self.out / "final"), "resumed_from": str(self.resumed_from) if self.resumed_from else None}
        if self.rank == 0:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def pretrain(cfg: PretrainConfig, *, show_progress: bool = True) -> dict:
    return Pretrainer(cfg, show_progress=show_progress).run()
