"""RoPE variants: angles equal appendix B's formulas; converted checkpoints reload with identical logits."""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from pretrain.apply import RopeConversionError, apply_rope_variant
from pretrain.modeling import load_model
from pretrain.rope import granularity, rope_config_changes, variant_angles
from pretrain.saving import save_hf
from pretrain.xpos_modeling import (
    XPosLlamaConfig,
    XPosLlamaForCausalLM,
    fp16_max_span,
    xpos_scale,
    xpos_zeta,
)

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}))
    with torch.no_grad():  # larger weights so positional changes move the logits visibly
        for p in model.parameters():
            p.mul_(8.0) if p.dim() == 2 else None
    out = tmp_path_factory.mktemp("tiny") / "src"
    model.save_pretrained(out)
    return out


def _formula(d, theta_j):
    return torch.tensor([theta_j(j) for j in range(d // 2)], dtype=torch.float64)


@pytest.mark.parametrize("variant", ["none", "abf", "pi", "xpos-abf"])
def test_loaded_angles_equal_appendix_b(tiny_llama_dir, tmp_path, variant):
    d, b, beta, seq = 8, 10_000.0, 50.0, 256
    alpha = 64 / seq
    expected = {
        "none": _formula(d, lambda j: b ** (-2 * j / d)),
        "abf": _formula(d, lambda j: (beta * b) ** (-2 * j / d)),
        "xpos-abf": _formula(d, lambda j: (beta * b) ** (-2 * j / d)),
        "pi": _formula(d, lambda j: alpha * b ** (-2 * j / d)),
    }[variant]
    assert torch.allclose(variant_angles(variant, d, b, base=beta * b, factor=1 / alpha), expected, rtol=1e-12)
    apply_rope_variant(tiny_llama_dir, variant, tmp_path / variant, base=beta * b, seq_len=seq)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / variant, trust_remote_code=True)
    loaded = model.model.rotary_emb.inv_freq.double()
    assert torch.allclose(loaded, expected, rtol=1e-6)
    assert model.config.max_position_embeddings == seq


def test_config_carries_both_spellings(tiny_llama_dir, tmp_path):
    apply_rope_variant(tiny_llama_dir, "pi", tmp_path / "pi", seq_len=256)
    cfg = json.loads((tmp_path / "pi" / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_type"] == "linear" and cfg["rope_parameters"]["factor"] == 4.0
    assert cfg["rope_scaling"] == {"rope_type": "linear", "type": "linear", "factor": 4.0}
    assert cfg["rope_theta"] == 10_000.0 and cfg["original_max_position_embeddings"] == 64
    apply_rope_variant(tiny_llama_dir, "abf", tmp_path / "abf")
    cfg = json.loads((tmp_path / "abf" / "config.json").read_text())
    assert cfg["rope_theta"] == 500_000.0 and "rope_scaling" not in cfg


@pytest.mark.parametrize("variant", ["none", "abf", "pi", "xpos-abf"])
def test_saved_variant_reloads_with_identical_logits(tiny_llama_dir, tmp_path, variant):
    apply_rope_variant(tiny_llama_dir, variant, tmp_path / "conv", base=1e6, seq_len=256)
    first = load_model(tmp_path / "conv").eval()
    save_hf(first, tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", trust_remote_code=True).eval()
    x = torch.randint(0, TINY["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(first(x).logits, again(x).logits)
    plain = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():
        changed = (first(x).logits - plain(x).logits).abs().max().item()
    assert (changed == 0.0) == (variant == "none")


def test_xpos_checkpoint_reloads_without_longscale(tiny_llama_dir, tmp_path):
    """A fresh interpreter that never imports longscale rebuilds xPos from the checkpoint's own file."""
    import subprocess
    import sys

    apply_rope_variant(tiny_llama_dir, "xpos-abf", tmp_path / "x", base=1e6, seq_len=256)
    here = load_model(tmp_path / "x").eval()
    x = torch.arange(40)[None] % TINY["vocab_size"]
    with torch.no_grad():
        expected = here(x).logits.double().sum().item()
    code = ("import sys, torch; from transformers import AutoModelForCausalLM; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval(); "
            "assert 'pretrain' not in sys.modules; "
            "print(type(m).__module__, m(torch.arange(40)[None] % 97).logits.double().sum().item())")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    module, total = done.stdout.split()[-2:]
    assert module.startswith("transformers_modules") and float(total) == pytest.approx(expected, rel=1e-6)


def test_xpos_off_equals_plain_llama_and_on_is_shift_invariant(tiny_llama_dir):
    plain = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    cfg = XPosLlamaConfig(**plain.config.to_dict() | {"use_xpos_scaling": False, "xpos_scale_base": 8.0})
    xpos = XPosLlamaForCausalLM(cfg).eval()
    xpos.load_state_dict(plain.state_dict())
    x = torch.randint(0, TINY["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(xpos(x).logits, plain(x).logits)
        xpos.config.use_xpos_scaling = True
        on = xpos(x).logits
        shifted = xpos(x, position_ids=torch.arange(40)[None] + 13).logits
    assert (on - plain(x).logits).abs().max() > 1e-3  # the decay really changes attention
    assert torch.allclose(on, shifted, atol=1e-4)  # scores depend on m - n only


def _xpos_32k(tiny_llama_dir, scale_base=512.0):
    """The tiny model as an xPos ABF checkpoint of a 32k context (the size where fp16 used to give NaN)."""
    plain = LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval()
    cfg = XPosLlamaConfig(**plain.config.to_dict() | {"max_position_embeddings": 32768, "xpos_scale_base": scale_base,
                                                      "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    model = XPosLlamaForCausalLM(cfg).eval()
    model.load_state_dict(plain.state_dict())
    return model


def test_xpos_fp16_logits_finite_at_a_long_position(tiny_llama_dir):
    model = _xpos_32k(tiny_llama_dir)
    x = torch.randint(0, TINY["vocab_size"], (2, 48), generator=torch.Generator().manual_seed(4))
    pos = torch.arange(48)[None].repeat(2, 1) + torch.tensor([[30_000], [0]])  # near the end, and at the start
    with torch.no_grad():
        full = model(x, position_ids=pos).logits
        half = model.half()(x, position_ids=pos).logits.float()
    assert torch.isfinite(half).all()
    assert (half - full).abs().max() < 0.05 * full.abs().max()  # fp16 agrees with fp32 to fp16 precision
    # the old fixed centre (max_position_embeddings / 2) put the key factor out of float16's range here
    old_key_factor = 1 / xpos_scale(pos, 8, 0.4, 512.0, center=16384)
    assert torch.isinf(old_key_factor.half()).any()


def test_xpos_fp16_refuses_a_span_it_cannot_hold(tiny_llama_dir):
    model = _xpos_32k(tiny_llama_dir).half()
    limit = fp16_max_span(0.4, 512.0)
    assert 5000 < limit < 6000
    x = torch.randint(0, TINY["vocab_size"], (1, 2))
    with torch.no_grad():
        assert torch.isfinite(model(x, position_ids=torch.tensor([[0, limit - 2]])).logits).all()
        with pytest.raises(ValueError, match="xPos in float16 overflows.*bfloat16 or float32"):
            model(x, position_ids=torch.tensor([[0, limit + 200]]))
        assert torch.isfinite(model.float()(x, position_ids=torch.tensor([[0, 20_000]])).logits).all()


def test_xpos_kv_cache_decoding_equals_one_full_forward(tiny_llama_dir):
    """The centre is fixed at the prefill and kept while the cache grows (cached keys carry it)."""
    model = _xpos_32k(tiny_llama_dir, scale_base=8.0)  # a fast decay, so a wrong centre would show
    x = torch.randint(0, TINY["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(x).logits
        out = model(x[:, :24], use_cache=True)
        steps, cache = [out.logits], out.past_key_values
        for t in range(24, 40):
            out = model(x[:, t:t + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
            cache = out.past_key_values
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-4)


def test_xpos_scale_follows_sun_et_al():
    d, gamma, sb = 8, 0.4, 512.0
    zeta = xpos_zeta(d, gamma)
    assert torch.allclose(zeta, torch.tensor([(i / 4 + 0.4) / 1.4 for i in range(4)], dtype=torch.float64))
    pos = torch.tensor([[0, 100, 1000]])
    s = xpos_scale(pos, d, gamma, sb, center=0).double()
    assert torch.allclose(s[0, 2, :4], zeta ** (1000 / sb), rtol=1e-5) and torch.equal(s[..., :4], s[..., 4:])
    # q_m . k_n factor depends on m - n only
    s2 = xpos_scale(pos, d, gamma, sb, center=500).double()
    assert torch.allclose(s[0, 2] / s[0, 1], s2[0, 2] / s2[0, 1], rtol=1e-5)


def test_granularity_matches_appendix_b_numbers():
    assert math.isclose(granularity("pi", 10_000, factor=4), 0.027, abs_tol=5e-4)
    assert math.isclose(granularity("abf", 500_000), 0.076, abs_tol=5e-4)


def test_bad_inputs_get_clear_errors(tiny_llama_dir, tmp_path):
    with pytest.raises(RopeConversionError, match="unknown variant"):
        apply_rope_variant(tiny_llama_dir, "yarn", tmp_path / "x")
    with pytest.raises(RopeConversionError, match="no config.json"):
        apply_rope_variant(tmp_path, "abf", tmp_path / "y")
    with pytest.raises(RopeConversionError, match="PI needs"):
        apply_rope_variant(tiny_llama_dir, "pi", tmp_path / "z", seq_len=32)
    with pytest.raises(RopeConversionError, match="must differ"):
        apply_rope_variant(tiny_llama_dir, "abf", tiny_llama_dir)
    with pytest.raises(ValueError, match="base must be"):
        rope_config_changes({"max_position_embeddings": 64, "rope_theta": 1e4}, "abf", base=0.5)


@pytest.mark.parametrize("variant", ["none", "abf", "xpos-abf"])
def test_a_shorter_seq_len_never_shrinks_the_window(tiny_llama_dir, tmp_path, variant):
    """Training at 32 tokens a model that handles 64 positions keeps its 64 (it shrank to 32 before)."""
    changes = apply_rope_variant(tiny_llama_dir, variant, tmp_path / variant, seq_len=32)
    cfg = json.loads((tmp_path / variant / "config.json").read_text())
    assert changes["max_position_embeddings"] == cfg["max_position_embeddings"] == 64
    assert cfg["original_max_position_embeddings"] == 64
