"""`apply-rope`: write a checkpoint converted to a RoPE variant, without training.

Conversion is file-level: weights and tokenizer files are copied as they are (no variant renames a
weight), and config.json gets the variant's keys. xPos ABF also gets its modeling file and `auto_map`,
so `trust_remote_code=True` rebuilds it without longscale installed. Loading a model with a variant applied
in memory is pretrain/modeling.py; saving one is pretrain/saving.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from longscale.common.errors import LongscaleError
from pretrain.rope import VARIANTS, patch_config_file, rope_config_changes

XPOS_MODULE = "modeling_xpos_llama"
XPOS_SOURCE = Path(__file__).with_name("xpos_modeling.py")


class RopeConversionError(LongscaleError, ValueError):
    """The model folder cannot be converted (missing config, unsupported architecture or variant)."""


def read_llama_config(model_dir: Path) -> dict:
    """config.json of a Llama-architecture HF folder; anything else is a RopeConversionError."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise RopeConversionError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    config = json.loads(path.read_text())
    if config.get("model_type") not in ("llama", "xpos_llama"):
        raise RopeConversionError(f"{model_dir} is a {config.get('model_type')!r} model; only Llama-architecture "
                                  "checkpoints can be converted")
    return config


def xpos_config_changes(enabled: bool) -> dict:
    """config.json keys that turn a Llama checkpoint into xPos (or back into plain Llama)."""
    if enabled:
        return {"model_type": "xpos_llama", "architectures": ["XPosLlamaForCausalLM"],
                "auto_map": {"AutoConfig": f"{XPOS_MODULE}.XPosLlamaConfig",
                             "AutoModelForCausalLM": f"{XPOS_MODULE}.XPosLlamaForCausalLM"},
                "xpos_gamma": 0.4, "xpos_scale_base": 512.0, "use_xpos_scaling": True,
                "xpos_center": None}  # older checkpoints fixed a centre; it is now each sequence's own
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "auto_map": None, "xpos_gamma": None,
            "xpos_scale_base": None, "use_xpos_scaling": None, "xpos_center": None}


def variant_config_changes(config: dict, variant: str, *, base: float | None = None,
                           seq_len: int | None = None) -> dict:
    """Every config.json key that `variant` changes (RoPE keys plus the xPos keys, set or cleared)."""
    changes = rope_config_changes(config, variant, base=base, seq_len=seq_len)
    changes.update(xpos_config_changes(variant == "xpos-abf"))
    return changes


def apply_rope_variant(model_dir: str | Path, variant: str, output: str | Path, *, base: float | None = None,
                       seq_len: int | None = None) -> dict:
    """Copy `model_dir` to `output` converted to `variant`; return the config.json keys that changed."""
    model_dir, output = Path(model_dir), Path(output)
    if variant not in VARIANTS:
        raise RopeConversionError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    config = read_llama_config(model_dir)
    try:
        changes = variant_config_changes(config, variant, base=base, seq_len=seq_len)
    except ValueError as exc:
        raise RopeConversionError(str(exc)) from exc
    if output.resolve() == model_dir.resolve():
        raise RopeConversionError("--output must differ from --model (the source is never modified)")
    output.mkdir(parents=True, exist_ok=True)
    for item in model_dir.iterdir():
        if item.is_file() and item.name != f"{XPOS_MODULE}.py":
            shutil.copy2(item, output / item.name)
    if variant == "xpos-abf":
        shutil.copy2(XPOS_SOURCE, output / f"{XPOS_MODULE}.py")
    patch_config_file(output, changes)
    return changes
