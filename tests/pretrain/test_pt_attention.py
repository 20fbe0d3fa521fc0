"""The attention kernel choice (pretrain/attention.py): selection logic, numerics against eager, and that the choice
survives per-layer torch.compile. cuDNN itself needs a Hopper GPU (the benchmark checks it there); on CPU the
`flash` kernel runs the same code path with SDPA's CPU flash backend."""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaConfig, LlamaForCausalLM

import pretrain.attention as attention
from finetune.collate import RowCollator
from pretrain.attention import (
    CUDNN_GQA_IMPL,
    CUDNN_IMPL,
    FLASH_IMPL,
    AttentionKernelError,
    Hardware,
    attn_implementation,
    choose_kernel,
    sdpa_ops_in,
)

H100 = Hardware(cuda=True, capability=(9, 0), cudnn_version=91900)
A100 = Hardware(cuda=True, capability=(8, 0), cudnn_version=91900)
OLD_CUDNN = Hardware(cuda=True, capability=(9, 0), cudnn_version=8_907)
CPU = Hardware(cuda=False)


@pytest.mark.parametrize("hardware, expected", [(H100, "cudnn"), (A100, "flash"), (OLD_CUDNN, "flash"), (CPU, "sdpa")])
def test_auto_picks_cudnn_only_where_it_runs(hardware, expected):
    assert choose_kernel("auto", hardware) == expected


def test_explicit_choices_and_their_transformers_names():
    assert attn_implementation("cudnn", H100) == CUDNN_IMPL
    assert attn_implementation("cudnn_gqa", H100) == CUDNN_GQA_IMPL
    assert attn_implementation("flash", CPU) == FLASH_IMPL
    assert attn_implementation("flex", CPU) == attn_implementation("flex_attention", CPU) == "flex_attention"
    assert [attn_implementation(k, CPU) for k in ("sdpa", "eager", "flash_attention_2")] == \
        ["sdpa", "eager", "flash_attention_2"]
    assert not any("flash" in name for name in (CUDNN_IMPL, CUDNN_GQA_IMPL, FLASH_IMPL))  # transformers reserves those for flash-attn


def test_impossible_or_unknown_kernel_is_a_clear_error():
    with pytest.raises(AttentionKernelError, match="cudnn needs a CUDA GPU.*no CUDA device.*use auto or flash"):
        choose_kernel("cudnn", CPU)
    with pytest.raises(AttentionKernelError, match="cudnn_gqa needs a CUDA GPU.*capability 8.0"):
        choose_kernel("cudnn_gqa", A100)
    with pytest.raises(AttentionKernelError, match="capability 8.0"):
        choose_kernel("cudnn", A100)
    with pytest.raises(AttentionKernelError, match="unknown attention kernel 'fast'"):
        choose_kernel("fast", H100)
    assert Hardware.detect("cpu") == CPU


def tiny(impl: str, seed_model: LlamaForCausalLM | None = None) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg)
    if seed_model is not None:
        model.load_state_dict(seed_model.state_dict())
    model.set_attn_implementation(impl)
    return model


def test_causal_rows_match_eager_in_logits_and_gradients():
    reference = tiny("eager")
    ours = tiny(attn_implementation("flash", CPU), reference)
    x = torch.randint(1, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    outs = []
    for model in (reference, ours):
        logits = model(input_ids=x, use_cache=False).logits
        logits.float().square().mean().backward()
        outs.append((logits.detach(), model.model.layers[0].self_attn.k_proj.weight.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("impl", [CUDNN_IMPL, CUDNN_GQA_IMPL])
def test_cudnn_functions_grouped_heads_repeated_or_native_match_eager(impl, monkeypatch):
    """The cuDNN functions' own handling of grouped-query heads (`cudnn` repeats K/V, `cudnn_gqa` passes them with
    enable_gqa), run here on SDPA's CPU flash backend in cuDNN's place: logits and K-projection gradients = eager."""
    monkeypatch.setattr(attention, "_backends", lambda impl: [SDPBackend.FLASH_ATTENTION])
    reference = tiny("eager")
    attention.register()
    ours = tiny(impl, reference)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: calls.append((k.shape[1], kw.get("enable_gqa", False))) or sdpa(q, k, v, **kw))
    x = torch.randint(1, 128, (2, 40), generator=torch.Generator().manual_seed(4))
    outs = []
    for model in (reference, ours):
        logits = model(input_ids=x, use_cache=False).logits
        logits.float().square().mean().backward()
        outs.append((logits.detach(), model.model.layers[0].self_attn.k_proj.weight.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-6, rtol=1e-4)
    # tiny(): 4 query heads, 2 kv heads; our function's calls are the ones with is_causal (eager calls no SDPA)
    assert set(calls) == ({(4, False)} if impl == CUDNN_IMPL else {(2, True)})


def test_packed_rows_take_the_block_mask_and_keep_samples_apart():
    reference = tiny("eager")
    ours = tiny(attn_implementation("flash", CPU), reference)
    a, a2, b = (list(range(s, s + n)) for s, n in ((1, 14), (40, 14), (70, 20)))

    def logits(model, first):
        batch = RowCollator(0, True)([{"input_ids": first + b + [0] * 6, "labels": [0] * 40, "seq_lengths": [14, 20]}])
        batch.pop("labels")
        with torch.no_grad():  # FlexAttention has no CPU backward; the GPU benchmark trains through it
            return model(**batch, use_cache=False).logits

    torch.testing.assert_close(logits(ours, a), logits(reference, a), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits(ours, a2)[0, 14:34], logits(ours, a)[0, 14:34], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_the_kernel_choice_survives_per_layer_compile():
    """Around the step, the outer context allows only the math backend: plain `sdpa` obeys it, while our function's
    own sdpa_kernel, traced into each compiled layer's graph, still runs the flash op (forward and backward)."""
    x = torch.randint(1, 128, (2, 40), generator=torch.Generator().manual_seed(2))
    seen = {}
    for impl in ("sdpa", attn_implementation("flash", CPU)):
        model = tiny(impl)
        for layer in model.model.layers:
            layer.compile(backend="aot_eager")

        def step(model=model):
            with sdpa_kernel([SDPBackend.MATH]):
                model(input_ids=x, use_cache=False).logits.sum().backward()

        step()  # compile
        seen[impl] = sdpa_ops_in(step)
    assert not any("flash" in op for op in seen["sdpa"])
    assert {"aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward"} <= seen[FLASH_IMPL]


def test_saved_model_does_not_name_our_kernel(tmp_path):
    """A checkpoint trained with our kernel loads anywhere (vLLM, plain transformers): the config does not carry it."""
    tiny(attn_implementation("flash", CPU)).save_pretrained(tmp_path)
    assert "longscale" not in (tmp_path / "config.json").read_text()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"


def test_greedy_generation_matches_eager():
    """The probes decode with the same kernel: the prefill is a causal row, each new token attends to all keys."""
    reference = tiny("eager")
    ours = tiny(attn_implementation("flash", CPU), reference)
    prompt = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours.generate(prompt, **kw), reference.generate(prompt, **kw))
