"""`apply-rope`: write a checkpoint converted to a RoPE variant, without training.

Conversion is file-level: weights and tokenizer files are copied as they are (no variant renames a
weight), and config.json gets the variant's keys. xPos ABF also gets its modeling file and `auto_map`,
so `trust_remote_code=True` rebuilds it without longscale installed. Loading a model object is only
needed for `convert_model` (in-memory use by the trainer).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pretrain.rope import VARIANTS, patch_config_file, rope_config_changes

XPOS_MODULE = "modeling_xpos_llama"
XPOS_SOURCE = Path(__file__).with_name("xpos_modeling.py")


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


class RopeConversionError(ValueError):
    """The model folder cannot be converted (missing config, unsupported architecture or variant)."""


def _read_config(model_dir: Path) -> dict:
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
                "xpos_gamma": 0.4, "xpos_scale_base": 512.0, "use_xpos_scaling": True}
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "auto_map": None, "xpos_gamma": None,
            "xpos_scale_base": None, "use_xpos_scaling": None, "xpos_center": None}


def apply_rope_variant(model_dir: str | Path, variant: str, output: str | Path, *, base: float | None = None,
                       seq_len: int | None = None) -> dict:
    """Copy `model_dir` to `output` converted to `variant`; return the config.json keys that changed."""
    model_dir, output = Path(model_dir), Path(output)
    if variant not in VARIANTS:
        raise RopeConversionError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    config = _read_config(model_dir)
    try:
        changes = rope_config_changes(config, variant, base=base, seq_len=seq_len)
    except ValueError as exc:
        raise RopeConversionError(str(exc)) from exc
    changes.update(xpos_config_changes(variant == "xpos-abf"))
    if variant == "xpos-abf":
        changes["xpos_center"] = changes["max_position_embeddings"] // 2
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


def load_model(model_dir: str | Path, **kwargs):
    """Load any converted checkpoint with this package's classes (no remote code needed)."""
    from transformers import AutoModelForCausalLM

    config = _read_config(Path(model_dir))
    if config.get("model_type") == "xpos_llama":
        from pretrain.xpos_modeling import XPosLlamaForCausalLM

        return XPosLlamaForCausalLM.from_pretrained(model_dir, **kwargs)
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def compile_decoder_layers(model) -> int:
    """`torch.compile` each decoder layer in place (the classes named in `model._no_split_modules`); returns how many.

    Per layer rather than the whole model: one small graph per layer type compiles fast and fuses the element-wise
    work (RMSNorm, SwiGLU, RoPE) that dominates at 16k once attention is flash; the LM head, the loss, PEFT wrapping
    and FSDP hooks stay outside the graph. The whole-model compile through the Trainer ran at half the speed.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.compile()
    return len(layers)


def save_hf(model, output: str | Path, tokenizer=None, state_dict: dict | None = None) -> Path:
    """save_pretrained plus what transformers drops: vLLM's rope keys and, for xPos, the modeling file.

    `state_dict` overrides the model's own (a full state dict gathered from FSDP shards)."""
    output = Path(output)
    model.save_pretrained(output, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(output)
    return restore_dropped_config(output)


def restore_dropped_config(output: str | Path) -> Path:
    """Put back into a saved HF folder what `save_pretrained` drops: vLLM's `rope_theta` / `rope_scaling` keys
    (transformers 5 keeps only `rope_parameters`) and, for xPos, the modeling file and its `auto_map`."""
    output = Path(output)
    config = json.loads((output / "config.json").read_text())
    params = dict(config.get("rope_parameters") or {})
    extra: dict = {"rope_theta": params.get("rope_theta")}
    if params.get("rope_type") == "linear":
        extra["rope_scaling"] = {"rope_type": "linear", "type": "linear", "factor": params["factor"]}
    if config.get("model_type") == "xpos_llama":
        shutil.copy2(XPOS_SOURCE, output / f"{XPOS_MODULE}.py")
        extra["auto_map"] = xpos_config_changes(True)["auto_map"]
    patch_config_file(output, extra)
    return output


def load_variant_model(model_dir: str | Path, variant: str, *, base: float | None = None,
                       seq_len: int | None = None, **kwargs):
    """Load `model_dir` with `variant` applied in memory (`keep` = as saved); weights are untouched."""
    from transformers import AutoConfig

    if variant == "keep":
        return load_model(model_dir, **kwargs)
    config = _read_config(Path(model_dir))
    changes = rope_config_changes(config, variant, base=base, seq_len=seq_len)
    changes.update(xpos_config_changes(variant == "xpos-abf"))
    if variant == "xpos-abf":
        changes["xpos_center"] = changes["max_position_embeddings"] // 2
    merged = {k: v for k, v in (config | changes).items() if v is not None}
    merged.pop("rope_scaling", None)  # rope_parameters says it all for transformers
    if variant == "xpos-abf":
        from pretrain.xpos_modeling import XPosLlamaConfig, XPosLlamaForCausalLM

        merged.pop("model_type"), merged.pop("auto_map")
        return XPosLlamaForCausalLM.from_pretrained(model_dir, config=XPosLlamaConfig(**merged), **kwargs)
    from transformers import AutoModelForCausalLM

    cfg = AutoConfig.for_model(**merged)
    return AutoModelForCausalLM.from_pretrained(model_dir, config=cfg, **kwargs)
