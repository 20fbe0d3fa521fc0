"""Run checkpoints with exact resume: model (HF folder), optimizer, scheduler, RNG, data position, history.

Each checkpoint is written to a temporary folder and renamed into place, so a run killed mid-save
leaves the previous checkpoint whole; the newest complete `step-*` folder is the one resumed.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from longscale.common.checkpoints import latest_checkpoint as find_latest

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output: Path) -> Path:
    return Path(output) / "checkpoints"


def save_checkpoint(output: Path, step: int, model, tokenizer, trainer_state: dict, keep: int = 2,
                    model_state: dict | None = None) -> Path:
    from pretrain.saving import save_hf

    root = checkpoint_dir(output)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_hf(model, tmp, tokenizer, state_dict=model_state)
    torch.save(trainer_state | {"rng": rng_state()}, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(output: Path) -> Path | None:
    """The newest complete `step-N` folder (one whose trainer state was written)."""
    return find_latest(checkpoint_dir(output), "step-", marker=STATE_FILE)


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
