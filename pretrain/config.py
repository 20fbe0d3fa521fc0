"""The one configuration model of `longscale pretrain` (CLI flags, YAML and API spell the same fields)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from pretrain.attention import AttnKernel
from pretrain.data import parse_curriculum


class ApplyRopeConfig(BaseModel):
    model: str = Field(description="source model folder (Hugging Face format, Llama architecture)")
    variant: Literal["none", "abf", "pi", "xpos-abf"] = Field(description="RoPE variant")
    base: float | None = Field(None, gt=1, description="new RoPE base for abf/xpos-abf (default 500000)")
    seq_len: int | None = Field(None, gt=0, description="new context length (PI factor = seq_len / trained length)")
    output: str = Field(description="folder for the converted checkpoint")
    overwrite: bool = Field(False, description="replace a model already in --output (refused without it)")


class PretrainConfig(BaseModel):
    model: str = Field(description="starting checkpoint (Hugging Face folder)")
    output: str = Field(description="run folder: checkpoints, final model, metrics, loss curve")
    variant: Literal["keep", "none", "abf", "pi", "xpos-abf"] = Field(
        "abf", description="RoPE variant to apply before training (keep = as the checkpoint has it)")
    rope_base: float | None = Field(None, gt=1, description="RoPE base for abf/xpos-abf (default 500000)")
    source: list[str] = Field(default_factory=list, description="NAME=PATH:WEIGHT text source (jsonl/parquet/txt)")
    seq_len: int = Field(32768, gt=0, description="training sequence length (the long stage)")
    curriculum: str | None = Field(None, description="e.g. 4096:0.2,32768 = 4k sequences for 20% of tokens, then 32k")
    tokens_per_step: int = Field(4_194_304, gt=0, description="tokens per optimizer step, the same at every length")
    max_micro_batch: int = Field(1, gt=0, description="most sequences in one forward pass")
    total_tokens: int = Field(gt=0, description="training budget in tokens (whole steps: never exceeded)")
    lr: float = Field(2e-5, gt=0, description="peak learning rate")
    warmup_steps: int = Field(2000, ge=0, description="linear warm-up steps before the cosine decay")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm (0 = off)")
    param_dtype: Literal["fp32", "bf16"] = Field("fp32", description="parameter/optimizer dtype (compute is bf16 on GPU)")
    grad_ckpt: Literal["none", "full", "selective"] = Field("none", description="activation checkpointing")
    ckpt_every_layers: int = Field(2, gt=0, description="selective: checkpoint every N-th layer")
    attn: AttnKernel = Field("auto", description="attention kernel (pretrain/attention.py): auto = cudnn on "
                             "Hopper-class GPUs, flash on other GPUs, sdpa on CPU; or cudnn, flash, flex, sdpa, eager")
    compile: bool = Field(False, description="torch.compile each decoder layer")
    loss_chunk_tokens: int = Field(4096, gt=0, description="cross-entropy chunk: fp32 logits never exceed chunk x vocab")
    long_doc_tokens: int = Field(32768, gt=0, description="documents at least this long count as long")
    long_upsample: float = Field(1.0, ge=0, description="extra weight of long documents")
    save_every: int = Field(0, ge=0, description="checkpoint every N optimizer steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, gt=0, description="how many step checkpoints to keep")
    resume: bool = Field(False, description="continue from the newest checkpoint in --output (refused when its "
                         "recipe settings differ)")
    overwrite: bool = Field(False, description="replace the run already in --output (a non-empty --output is "
                            "refused without --resume or --overwrite)")
    seed: int = Field(0, description="seed for init, data order and dropout")
    device: str = Field("auto", description="auto, cpu or cuda")
    max_steps: int | None = Field(None, gt=0, description="stop after this many steps (the schedule still spans total_tokens)")

    # field validators (not a model validator) so that errors name the field
    @field_validator("tokens_per_step")
    @classmethod
    def _multiple_of_lengths(cls, value: int, info: ValidationInfo) -> int:
        if "seq_len" not in info.data or "curriculum" not in info.data:
            return value
        for length, _ in parse_curriculum(info.data["curriculum"], info.data["seq_len"]):
            if value % length:
                raise ValueError(f"{value} is not a multiple of sequence length {length}")
        return value

    @field_validator("total_tokens")
    @classmethod
    def _at_least_one_step(cls, value: int, info: ValidationInfo) -> int:
        if value < info.data.get("tokens_per_step", 0):
            raise ValueError("total_tokens must cover at least one optimizer step (tokens_per_step)")
        return value

    @field_validator("curriculum")
    @classmethod
    def _valid_curriculum(cls, value: str | None) -> str | None:
        parse_curriculum(value, 1)
        return value
