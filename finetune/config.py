"""FinetuneConfig: the one settings model behind `longscale finetune`, its YAML file and `run_finetune()`."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from longscale.common.config import CheckpointingConfig, CompileConfig, ConfigModel, OptimizerConfig
from pretrain.attention import AttentionConfig

LORA_DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class FinetuneOptimizer(OptimizerConfig):
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="fraction of steps spent warming up")


class FinetuneConfig(ConfigModel):
    """Every knob of data assembly and training; CLI flags, YAML keys and Python kwargs share these names.

    Training knobs shared with `longscale pretrain` live in sub-models (optimizer, checkpointing, compiler,
    attention); they are given flat (`--learning-rate`, `learning_rate:`) or nested (`optimizer: {...}`)."""


    # inputs / outputs
    model: str = Field(description="HF model folder or hub id (loaded with trust_remote_code, RoPE settings kept)")
    output: str = Field(description="output directory (dataset, stats, checkpoints, final model, loss curve)")
    short_data: list[str] = Field(default_factory=list, description="FT-Short files/dirs: JSONL, Parquet or a saved datasets dir")
    long_data: list[str] = Field(default_factory=list, description="data-factory output dirs (or their instances.jsonl)")
    pretrain_data: list[str] = Field(default_factory=list, description="raw pretraining text: JSONL with 'text' or .txt files")

    # assembly
    pack_length: int = Field(16384, ge=16, description="tokens per packed short/pretrain row")
    pack_attention: Literal["per-sample", "across"] = Field(
        "per-sample", description="per-sample: attention stays inside each packed sample; across: plain concatenation")
    max_length: int = Field(32768, ge=16, description="longest long sample accepted (tokens)")
    pad_to: Literal["bucket", "max"] = Field("bucket", description="long rows: bucket (length-grouped, round up to "
                                             "--pad-multiple) or max (every long row padded to --max-length)")
    pad_multiple: int = Field(64, ge=1, description="bucket mode: long rows padded up to a multiple of this")
    drop_overlong: bool = Field(False, description="drop (and count) long samples over --max-length instead of failing")
    loss_on_long_input: bool = Field(True, description="LM loss on the long samples' input prompts (paper 4.3)")
    loss_on_short_input: bool = Field(False, description="LM loss on the short samples' input prompts")
    long_ratio: float | None = Field(None, ge=0, le=1, description="fraction of the mix that is long data (None: all)")
    pretrain_ratio: float | None = Field(None, ge=0, le=1, description="fraction of the mix that is pretrain text")
    mix_by: Literal["samples", "tokens"] = Field("samples", description="ratios count samples or tokens")
    seed: int = Field(0, description="seed for mixing, shuffling and training")
    prepare_only: bool = Field(False, description="write OUTPUT/dataset + dataset_stats.json and exit")

    # training
    lora_r: int = Field(0, ge=0, description="LoRA rank; 0 = full finetuning")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha")
    lora_targets: list[str] = Field(default_factory=lambda: list(LORA_DEFAULT_TARGETS), description="LoRA target modules")
    optimizer: FinetuneOptimizer = Field(default_factory=FinetuneOptimizer)
    batch_tokens: int = Field(65536, ge=1, description="tokens per optimizer step (all devices); sets grad accumulation")
    per_device_rows: int = Field(1, ge=1, description="rows per device micro-batch")
    epochs: float = Field(1.0, gt=0, description="passes over the assembled data")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use --epochs)")
    bf16: bool | None = Field(None, description="bf16 weights/compute (default: where the device supports it)")
    gradient_checkpointing: bool = Field(True, description="recompute activations in backward (less memory, ~25% slower)")
    ckpt_every_layers: int = Field(1, ge=1, description="with --gradient-checkpointing: only every N-th decoder layer "
                                   "recomputes (1 = all, 2 = half of them)")
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    compiler: CompileConfig = Field(default_factory=CompileConfig)
    checkpointing: CheckpointingConfig = Field(default_factory=CheckpointingConfig)
    overwrite: bool = Field(False, description="replace the run already in --output (a non-empty --output is "
                            "refused without --resume or --overwrite)")
    logging_steps: int = Field(1, ge=1, description="log the loss every N steps")

    @field_validator("short_data", "long_data", "pretrain_data", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: object) -> object:
        """YAML `long_data: gen/` (one path, or comma-separated paths) means a list of them."""
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> "FinetuneConfig":
        if not (self.short_data or self.long_data or self.pretrain_data):
            raise ValueError("give at least one of --short-data, --long-data, --pretrain-data")
        if (self.long_ratio or 0) + (self.pretrain_ratio or 0) > 1:
            raise ValueError("--long-ratio plus --pretrain-ratio must not exceed 1")
        if (self.attention.attn_implementation == "flash_attention_2" and self.pack_attention == "per-sample"
                and self.per_device_rows > 1):
            # transformers only finds packed samples for varlen flash attention in a batch of one row
            raise ValueError("--attn-implementation flash_attention_2 keeps packed samples apart only with "
                             "--per-device-rows 1 (or use flex_attention / sdpa)")
        if self.pad_to == "max" and self.pad_multiple > self.max_length:
            raise ValueError("--pad-multiple is larger than --max-length")
        return self
