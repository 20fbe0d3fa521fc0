"""Save a trained model as a plain HF folder that vLLM and `trust_remote_code` both load (used by both trainers)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pretrain.apply import XPOS_MODULE, XPOS_SOURCE, xpos_config_changes
from pretrain.rope import patch_config_file


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
