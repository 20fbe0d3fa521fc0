"""The one configuration model of `longscale pretrain` (CLI flags, YAML and API spell the same fields)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from longscale.common.config import (
    CheckpointingConfig,
    CompileConfig,
    ConfigModel,
    Deprecated,
    OptimizerConfig,
    RopeConfig,
)
from pretrain.attention import AttentionConfig
from pretrain.data import parse_curriculum


def _compile_flag(value: object) -> str:
    """The old `--compile/--no-compile` (bool) as a torch_compile value."""
    return "layers" if str(value).lower() in ("true", "1", "yes") else "off"


TRAINER_DEPRECATED = {
    "lr": Deprecated("learning_rate"), "grad_ckpt": Deprecated("gradient_checkpointing"),
    "attn": Deprecated("attn_implementation"), "compile": Deprecated("torch_compile", _compile_flag, bool),
    "save_every": Deprecated("save_steps"), "keep_checkpoints": Deprecated("save_total_limit"),
}


class PretrainOptimizer(OptimizerConfig):
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(2000, ge=0, description="linear warm-up steps before the cosine decay")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak")


class PretrainCheckpointing(CheckpointingConfig):
    save_steps: int = Field(0, ge=0, description="checkpoint every N optimizer steps (0 = only at the end)")
    save_total_limit: int = Field(2, gt=0, description="how many step checkpoints to keep")
    resume: bool = Field(False, description="continue from the newest checkpoint in --output (refused when its "
                         "recipe settings differ)")


class PretrainCompile(CompileConfig):
    torch_compile: Literal["off", "layers"] = Field("off", description="layers: torch.compile each decoder layer")


class ApplyRopeConfig(ConfigModel):
    DEPRECATED = {"base": Deprecated("rope_base")}

    model: str = Field(description="source model folder (Hugging Face format, Llama architecture)")
    variant: Literal["none", "abf", "pi", "xpos-abf"] = Field(description="RoPE variant")
    rope: RopeConfig = Field(default_factory=RopeConfig)
    seq_len: int | None = Field(None, gt=0, description="new context length (PI factor = seq_len / trained length)")
    output: str = Field(description="folder for the converted checkpoint")
    overwrite: bool = Field(False, description="replace a model already in --output (refused without it)")


class PretrainConfig(ConfigModel):
    """`longscale pretrain`; the knobs it shares with `longscale finetune` live in the same sub-models."""

    DEPRECATED = TRAINER_DEPRECATED

    model: str = Field(description="starting checkpoint (Hugging Face folder)")
    output: str = Field(description="run folder: checkpoints, final model, metrics, loss curve")
    variant: Literal["keep", "none", "abf", "pi", "xpos-abf"] = Field(
        "abf", description="RoPE variant to apply before training (keep = as the checkpoint has it)")
    rope: RopeConfig = Field(default_factory=RopeConfig)
    source: list[str] = Field(default_factory=list, description="NAME=PATH:WEIGHT text source (jsonl/parquet/txt)")
    seq_len: int = Field(32768, gt=0, description="training sequence length (the long stage)")
    curriculum: str | None = Field(None, description="e.g. 4096:0.2,32768 = 4k sequences for 20% of tokens, then 32k")
    tokens_per_step: int = Field(4_194_304, gt=0, description="tokens per optimizer step, the same at every length")
    max_micro_batch: int = Field(1, gt=0, description="most sequences in one forward pass")
    total_tokens: int = Field(gt=0, description="training budget in tokens (whole steps: never exceeded)")
    optimizer: PretrainOptimizer = Field(default_factory=PretrainOptimizer)
    param_dtype: Literal["fp32", "bf16"] = Field("fp32", description="parameter/optimizer dtype (compute is bf16 on GPU)")
    gradient_checkpointing: Literal["none", "full", "selective"] = Field("none", description="activation checkpointing")
    ckpt_every_layers: int = Field(2, gt=0, description="selective: checkpoint every N-th layer")
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    compiler: PretrainCompile = Field(default_factory=PretrainCompile)
    loss_chunk_tokens: int = Field(4096, gt=0, description="cross-entropy chunk: fp32 logits never exceed chunk x vocab")
    long_doc_tokens: int = Field(32768, gt=0, description="documents at least this long count as long")
    long_upsample: float = Field(1.0, ge=0, description="extra weight of long documents")
    checkpointing: PretrainCheckpointing = Field(default_factory=PretrainCheckpointing)
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
