"""Load a (converted) checkpoint as a model object, with this package's xPos classes (no remote code needed).

Importing this module registers `xpos_llama` with the transformers Auto classes (the one import-time effect,
kept here so that file-level conversion in apply.py stays free of it).
"""
from __future__ import annotations

import json
from pathlib import Path

from pretrain.apply import read_llama_config, variant_config_changes


def register_xpos() -> None:
    """Make `xpos_llama` known to the Auto classes (no remote-code prompt when this package is present)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from pretrain.xpos_modeling import XPosLlamaConfig, XPosLlamaForCausalLM

    try:
        AutoConfig.register("xpos_llama", XPosLlamaConfig)
        AutoModelForCausalLM.register(XPosLlamaConfig, XPosLlamaForCausalLM)
    except ValueError:
        pass  # already registered


register_xpos()


def load_model(model_dir: str | Path, **kwargs):
    """Load a checkpoint; an xPos one with this package's classes (no remote code needed), any other through the
    Auto classes (the finetuner passes models of every architecture through here)."""
    from transformers import AutoModelForCausalLM

    config_file = Path(model_dir) / "config.json"
    model_type = json.loads(config_file.read_text()).get("model_type") if config_file.is_file() else None
    if model_type == "xpos_llama":
        from pretrain.xpos_modeling import XPosLlamaForCausalLM

        return XPosLlamaForCausalLM.from_pretrained(model_dir, **kwargs)
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def load_variant_model(model_dir: str | Path, variant: str, *, base: float | None = None,
                       seq_len: int | None = None, **kwargs):
    """Load `model_dir` with `variant` applied in memory (`keep` = as saved); weights are untouched."""
    from transformers import AutoConfig

    if variant == "keep":
        return load_model(model_dir, **kwargs)
    config = read_llama_config(Path(model_dir))
    changes = variant_config_changes(config, variant, base=base, seq_len=seq_len)
    merged = {k: v for k, v in (config | changes).items() if v is not None}
    merged.pop("rope_scaling", None)  # rope_parameters says it all for transformers
    if variant == "xpos-abf":
        from pretrain.xpos_modeling import XPosLlamaConfig, XPosLlamaForCausalLM

        merged.pop("model_type"), merged.pop("auto_map")
        return XPosLlamaForCausalLM.from_pretrained(model_dir, config=XPosLlamaConfig(**merged), **kwargs)
    from transformers import AutoModelForCausalLM

    cfg = AutoConfig.for_model(**merged)
    return AutoModelForCausalLM.from_pretrained(model_dir, config=cfg, **kwargs)
