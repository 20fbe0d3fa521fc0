"""Probes score a packed row (position_ids restarting per sample) exactly as they score each sample alone:
no KV cache, explicit position ids (real transformers kernels; plain Llama and xPos ABF checkpoints)."""
from __future__ import annotations

import pytest
import torch

from pretrain.apply import apply_rope_variant
from pretrain.probes.model import HFModel
from tests.pretrain.tiny_llama import save_tiny_llama


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, embedded_model_dir):
    root = tmp_path_factory.mktemp("packed")
    llama = save_tiny_llama(root / "llama", embedded_model_dir, max_positions=256, rope_theta=10_000.0)
    apply_rope_variant(llama, "xpos-abf", root / "xpos", base=1e5, seq_len=256)
    return {"llama": llama, "xpos-abf": root / "xpos"}


def _samples():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(5, 49_000, (n,), generator=g) for n in (17, 9, 23)]


@pytest.mark.parametrize("kind", ["llama", "xpos-abf"])
def test_packed_row_losses_equal_each_sample_alone(model_dirs, kind):
    model = HFModel(model_dirs[kind], device="cpu", dtype="fp32")
    samples = _samples()
    row = torch.cat(samples)[None]
    positions = torch.cat([torch.arange(len(s)) for s in samples])[None]
    packed = model.token_losses(row, position_ids=positions)
    start = 0
    for s in samples:
        alone = model.token_losses(s[None])
        got = packed[start:start + len(s) - 1]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5)
        start += len(s)
        if start < row.shape[1]:
            assert torch.isnan(packed[start - 1])  # the next sample's first token: no loss across the boundary


def test_a_cache_would_break_isolation(model_dirs):
    """The control: the same packed row run with use_cache=True lets the later samples attend to the
    earlier ones, so the test above can fail."""
    model = HFModel(model_dirs["llama"], device="cpu", dtype="fp32")
    samples = _samples()
    row = torch.cat(samples)[None]
    positions = torch.cat([torch.arange(len(s)) for s in samples])[None]
    with torch.no_grad():
        isolated = model.model(input_ids=row, position_ids=positions, use_cache=False).logits
        cached = model.model(input_ids=row, position_ids=positions, use_cache=True).logits
    first = len(samples[0])
    torch.testing.assert_close(cached[0, :first], isolated[0, :first])  # the first sample sees nothing else
    assert (cached[0, first:] - isolated[0, first:]).abs().max() > 1e-3
