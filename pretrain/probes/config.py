"""One config model for `longscale probe ...` (the same fields from flags, YAML or an API body)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from longscale.common.config import ConfigModel, Deprecated, RopeConfig
from longscale.common.text import parse_lengths


class ProbeRope(RopeConfig):
    rope_base: float | None = Field(500_000.0, gt=1, description="rope-decay: the ABF base to draw")


class ProbeConfig(ConfigModel):
    DEPRECATED = {"abf_base": Deprecated("rope_base")}

    model: str | None = Field(None, description="model folder (rope-decay only reads its config; optional there)")
    lengths: list[int] = Field(default_factory=lambda: [2048, 4096, 8192, 16384, 32768],
                               description="context lengths, e.g. 2k,4k,32768")
    texts: str | None = Field(None, description="evaluation text: .txt/.jsonl/.parquet file or folder")
    samples: int = Field(10, gt=0, description="examples per length (first-sentence, passkey per depth)")
    windows: int = Field(4, gt=0, description="text windows per length (loss probes)")
    bin_size: int = Field(500, gt=0, description="positions per bin (loss-by-position)")
    prompt: Literal["plain", "chat"] = Field("plain", description="first-sentence prompt style")
    seed: int = Field(0, description="sampling seed")
    device: str = Field("auto", description="auto, cpu or cuda")
    output: str = Field("probe-results", description="folder for the JSON and PNG")
    rope: ProbeRope = Field(default_factory=ProbeRope)
    pi_factor: float = Field(4.0, description="rope-decay: the PI factor to draw")

    @field_validator("lengths", mode="before")
    @classmethod
    def _lengths(cls, value):
        return parse_lengths(value if isinstance(value, (list, str)) else str(value))
