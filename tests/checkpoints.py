"""Comparing saved checkpoints in tests: every parameter of two Hugging Face folders, by name."""
from __future__ import annotations

import torch


def saved_params(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach() for k, v in AutoModelForCausalLM.from_pretrained(folder).named_parameters()}


def assert_same_params(got: dict, want: dict, atol: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=atol, msg=name)
