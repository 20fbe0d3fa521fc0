"""`--step-in-backward` in the pretrainer: the same training as the plain optimizer step (fp32, CPU), exact resume
in both directions, and clear refusals. Memory is not measured here (CPU): that is the GPU benchmark's job."""
from __future__ import annotations

import json

import pytest
import torch

from longscale.common.errors import ConfigError
from pretrain.config import PretrainConfig
from pretrain.step_in_backward import StepInBackward, check_step_in_backward
from pretrain.trainer import Pretrainer, pretrain
from tests.checkpoints import assert_same_params, saved_params
from tests.pretrain.tiny_llama import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, embedded_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("sib") / "model", embedded_model_dir, max_positions=64,
                           rope_theta=10_000.0)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sib-texts")
    words = "the quick brown fox jumps over the lazy dog and runs into the forest where owls sing".split()
    for i in range(3):
        (d / f"doc{i}.txt").write_text(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(500 + 200 * i)))
    return d


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_step_in_backward_trains_like_the_plain_step_and_resumes_both_ways(tiny_model, text_dir, tmp_path):
    """Same seed, data and schedule (warm-up + cosine, weight decay on matrices only), full activation
    checkpointing, fp32: losses, learning rates and final weights equal the plain optimizer step's (tolerance
    1e-6: only the order of the per-parameter updates differs, each is the same element-wise AdamW), with the
    optimizer state in host memory too; a checkpoint written with the step in backward, without it, or with the
    state offloaded resumes with the flag (with or without offloading) onto the same trajectory."""
    torch.set_num_threads(2)
    base = dict(model=str(tiny_model), variant="abf", rope_base=1e5, source=[f"books={text_dir}:1"], seq_len=64,
                tokens_per_step=256, max_micro_batch=4, total_tokens=256 * 6, learning_rate=3e-3, warmup_steps=2,
                weight_decay=0.1, grad_clip=0.0, gradient_checkpointing="full", device="cpu")
    # the plain run "clips" at a norm never reached, so that it reports its gradient norms (a no-op: x 1.0)
    pretrain(PretrainConfig(**base | {"grad_clip": 1e6}, output=str(tmp_path / "plain")), show_progress=False)
    pretrain(PretrainConfig(**base, step_in_backward=True, output=str(tmp_path / "sib")), show_progress=False)
    plain, sib = _records(tmp_path / "plain"), _records(tmp_path / "sib")
    assert len(plain) == 6 and plain[-1]["loss"] < plain[0]["loss"] - 0.5
    assert [r["loss"] for r in sib] == pytest.approx([r["loss"] for r in plain], rel=1e-6, abs=1e-6)
    assert [r["lr"] for r in sib] == [r["lr"] for r in plain]  # one scheduler drives every parameter's step
    assert len({r["lr"] for r in plain}) >= 4  # warm-up and decay: the lr really changed
    # the gradient norm is still reported (measured inside backward), though nothing was clipped
    assert all(r["grad_norm"] > 0 for r in sib)
    assert [r["grad_norm"] for r in sib] == pytest.approx([r["grad_norm"] for r in plain], rel=1e-4)
    want = saved_params(tmp_path / "plain" / "final")
    assert_same_params(saved_params(tmp_path / "sib" / "final"), want)
    offload = dict(step_in_backward=True, offload_optimizer_state=True)
    pretrain(PretrainConfig(**base, **offload, output=str(tmp_path / "offload")), show_progress=False)
    assert [r["loss"] for r in _records(tmp_path / "offload")] == pytest.approx([r["loss"] for r in plain], rel=1e-6,
                                                                                abs=1e-6)
    assert_same_params(saved_params(tmp_path / "offload" / "final"), want)

    # the first 3 steps with the flag / without it / with the state offloaded, then resumed with the flag
    for first, then in (({"step_in_backward": True}, {}), ({}, offload), (offload, {})):
        out = tmp_path / f"split-{len(first)}-{len(then)}"
        pretrain(PretrainConfig(**base, **first, output=str(out), max_steps=3), show_progress=False)
        summary = pretrain(PretrainConfig(**base, **{"step_in_backward": True} | then, output=str(out), resume=True),
                           show_progress=False)
        assert summary["resumed_from"].endswith("step-0000003") and summary["steps"] == 6
        assert [r["loss"] for r in _records(out)] == pytest.approx([r["loss"] for r in plain], rel=1e-6, abs=1e-6)
        assert_same_params(saved_params(out / "final"), want)


def test_step_in_backward_wraps_the_optimizer_and_keeps_its_state_format(tiny_model, text_dir, tmp_path):
    cfg = PretrainConfig(model=str(tiny_model), variant="keep", source=[str(text_dir)], seq_len=64, tokens_per_step=128,
                         max_micro_batch=2, total_tokens=256, step_in_backward=True, device="cpu",
                         output=str(tmp_path / "run"))
    assert cfg.optimizer.grad_clip == 0  # the default clipping is off with the flag (it cannot be done)
    trainer = Pretrainer(cfg, show_progress=False)
    assert isinstance(trainer.optimizer, StepInBackward) and trainer.optimizer.inner_class is torch.optim.AdamW
    trainer.train_step()
    assert all(p.grad is None for p in trainer.model.parameters())  # freed inside backward, not by zero_grad
    state = trainer.optimizer.state_dict()
    n = sum(1 for p in trainer.model.parameters() if p.requires_grad)
    assert sorted(state["state"]) == list(range(n))  # plain AdamW layout: index -> step, exp_avg, exp_avg_sq
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert [g["weight_decay"] for g in state["param_groups"]] == [0.1, 0.0]


def test_step_in_backward_refusals_are_clear(tiny_model, text_dir, tmp_path):
    base = dict(model=str(tiny_model), variant="keep", source=[str(text_dir)], seq_len=64, total_tokens=1024,
                device="cpu", step_in_backward=True)
    with pytest.raises(ValueError, match=r"cannot clip by the global gradient norm \(--grad-clip 1.0\)"):
        PretrainConfig(**base, tokens_per_step=128, grad_clip=1.0, output=str(tmp_path / "a"))
    # 512 tokens a step at length 64 with micro-batches of 2: 4 micro-batches would have to accumulate
    with pytest.raises(ConfigError, match=r"gradient accumulation is impossible \(--tokens-per-step 512 at length "
                                          r"64 needs 4 micro-batches of 2: set --max-micro-batch to at least 8\)"):
        Pretrainer(PretrainConfig(**base, tokens_per_step=512, max_micro_batch=2, output=str(tmp_path / "b")),
                   show_progress=False)
    # a curriculum stage at a shorter length needs more sequences a step: checked for every stage up front
    with pytest.raises(ConfigError, match="at length 32 needs 2 micro-batches"):
        Pretrainer(PretrainConfig(**base, tokens_per_step=128, max_micro_batch=2, curriculum="32:0.5,64",
                                  output=str(tmp_path / "c")), show_progress=False)
    with pytest.raises(ConfigError, match=r"one process only .*WORLD_SIZE 2"):
        check_step_in_backward(accumulation=1, grad_clip=0.0, world=2)
    with pytest.raises(ConfigError, match="cannot clip"):  # a config copied without validation is still caught
        check_step_in_backward(accumulation=1, grad_clip=1.0, world=1)


def test_offloaded_state_lives_on_the_host_and_is_prefetched_in_backward_order():
    """The moments stay in their own host tensors between steps, the copies in are prefetched in the previous
    backward's hook order (every one but the first of each backward), and the training equals plain AdamW's. CPU only: the
    CUDA streams, pinned memory and their overlap run on the GPU benchmark alone."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(6, 6) for _ in range(4)]
    plain_model, model = torch.nn.Sequential(*layers), torch.nn.Sequential(*[torch.nn.Linear(6, 6) for _ in range(4)])
    model.load_state_dict(plain_model.state_dict())
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2)
    opt = StepInBackward(torch.optim.AdamW(model.parameters(), lr=1e-2), offload_state=True)
    assert opt.offload is not None
    for _ in range(4):
        x = torch.randn(5, 6)
        for m, o in ((plain_model, plain), (model, opt)):
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
    params = list(model.parameters())
    assert len(opt.offload.order) == len(params) and opt.offload.order[0] is params[-1]  # backward: last first
    assert opt.offload.hits == 3 * (len(params) - 1)  # steps 2-4 (1 made the moments): all but the first
    for p in params:
        assert opt.state[p]["exp_avg"] is opt._host[p]["exp_avg"]  # between steps: the host tensors
    for a, b in zip(plain_model.parameters(), params):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)
    state, want = opt.state_dict(), plain.state_dict()
    assert all(torch.equal(state["state"][i]["exp_avg_sq"], want["state"][i]["exp_avg_sq"]) for i in want["state"])
