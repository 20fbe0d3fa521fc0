"""`--step-in-backward` on the TRL path: the Trainer's own optimizer stepped per parameter inside backward trains
exactly like its plain step (fp32, CPU), resumes from checkpoints written with or without it, and refuses what it
cannot do. Memory is not measured here (CPU): that is the GPU benchmark's job."""
from __future__ import annotations

import pytest
import torch
from conftest import write_long_dir, write_short
from transformers import TrainerCallback

from finetune.assemble import assemble_rows, load_tokenizer, to_dataset
from finetune.config import FinetuneConfig
from finetune.trainer import build_trainer
from longscale.commands.main import main as longscale_main
from longscale.common.errors import ConfigError
from pretrain.step_in_backward import StepInBackward
from tests.checkpoints import assert_same_params


@pytest.fixture
def data(tmp_path):
    return {"short_data": [str(write_short(tmp_path / "short.jsonl", 24))],
            "long_data": [str(write_long_dir(tmp_path / "gen", [700, 900]))]}


def cfg(out, model, data, **kw):
    base = dict(model=str(model), output=str(out), pack_length=256, max_length=512, batch_tokens=256,
                learning_rate=1e-2, warmup_ratio=0.25, weight_decay=0.1, bf16=False, save_steps=1000, seed=3,
                torch_compile="off")
    return FinetuneConfig(**base | kw, **data)


def test_step_in_backward_trains_like_the_trainers_step(tmp_path, tiny_llama_dir, data):
    """Same seed, rows and cosine schedule with warm-up, the Trainer's full activation checkpointing, weight decay
    on matrices only, fp32: the logged losses and learning rates and the final weights equal the plain step's
    (which does not clip either: --grad-clip 0), and the gradients are gone after each backward."""
    torch.set_num_threads(2)
    runs = {}
    for name, kw in {"plain": dict(grad_clip=0.0), "sib": dict(step_in_backward=True),
                     "offload": dict(step_in_backward=True, offload_optimizer_state=True)}.items():
        config = cfg(tmp_path / name, tiny_llama_dir, data, max_steps=5, **kw)
        assert config.optimizer.grad_clip == 0
        tokenizer = load_tokenizer(config.model)
        rows, _ = assemble_rows(config, tokenizer)
        trainer = build_trainer(config, to_dataset(rows), tokenizer)
        assert trainer.args.max_grad_norm == 0 and trainer.args.gradient_checkpointing
        trainer.train()
        inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
        assert isinstance(inner, StepInBackward) == (name != "plain")
        assert (name == "offload") == (getattr(inner, "offload", None) is not None)
        history = [h for h in trainer.state.log_history if "loss" in h]
        runs[name] = dict(losses=[h["loss"] for h in history], lrs=[h["learning_rate"] for h in history],
                          norms=[h.get("grad_norm") for h in history],
                          params={k: v.detach().clone() for k, v in trainer.model.named_parameters()})
        if name != "plain":
            assert all(p.grad is None for p in trainer.model.parameters())
    plain = runs["plain"]
    assert len(plain["losses"]) == 5 and plain["losses"][-1] < plain["losses"][0]
    assert len(set(plain["lrs"])) >= 3  # warm-up then decay
    for sib in (runs["sib"], runs["offload"]):
        assert sib["losses"] == pytest.approx(plain["losses"], rel=1e-6, abs=1e-6)
        assert sib["lrs"] == plain["lrs"]  # one scheduler drives every parameter's step
        assert sib["norms"] == pytest.approx(plain["norms"], rel=1e-4)  # measured inside backward for the logs
        assert_same_params(sib["params"], plain["params"])


class StopAt(TrainerCallback):
    """Ends training after step `at` (its checkpoint written): a run killed there, as far as the Trainer sees."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            control.should_training_stop = True
        return control


def test_step_in_backward_resumes_from_its_own_and_from_plain_checkpoints(tmp_path, tiny_llama_dir, data):
    """A 4-step run stopped after its step-2 checkpoint (optimizer.pt written with the flag, without it, or with
    the state offloaded) and resumed with the flag (offloading or not) ends where the uninterrupted run ends: the optimizer state keeps AdamW's own layout,
    so the moments carry over (losing them on the resume moves the step-4 loss by ~0.09)."""
    torch.set_num_threads(2)
    common = dict(max_steps=4, save_steps=2, gradient_checkpointing=False, grad_clip=0.0)

    def train(out, flags, stop=None, resume=None):
        config = cfg(out, tiny_llama_dir, data, **flags, **common)
        tokenizer = load_tokenizer(config.model)
        rows, _ = assemble_rows(config, tokenizer)
        trainer = build_trainer(config, to_dataset(rows), tokenizer, callbacks=[StopAt(stop)] if stop else [])
        trainer.train(resume_from_checkpoint=resume)
        params = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        return [h["loss"] for h in trainer.state.log_history if "loss" in h], params

    sib, offload = {"step_in_backward": True}, {"step_in_backward": True, "offload_optimizer_state": True}
    want_losses, want = train(tmp_path / "straight", sib)
    assert len(want_losses) == 4
    for i, (first, then) in enumerate(((sib, sib), ({}, offload), (offload, sib))):
        out = tmp_path / f"split-{i}"
        assert train(out, first, stop=2)[0] == pytest.approx(want_losses[:2], rel=1e-6, abs=1e-6)
        losses, params = train(out, then, resume=str(out / "checkpoints" / "checkpoint-2"))
        assert losses == pytest.approx(want_losses, rel=1e-6, abs=1e-6)  # steps 1-2 restored, 3-4 trained
        assert_same_params(params, want)


def test_step_in_backward_refusals_are_clear(tmp_path, tiny_llama_dir, data, capsys):
    with pytest.raises(ValueError, match=r"cannot clip by the global gradient norm \(--grad-clip 0.5\)"):
        cfg(tmp_path, tiny_llama_dir, data, step_in_backward=True, grad_clip=0.5)
    with pytest.raises(ValueError, match="--offload-optimizer-state .* needs --step-in-backward"):
        cfg(tmp_path, tiny_llama_dir, data, offload_optimizer_state=True)
    config = cfg(tmp_path, tiny_llama_dir, data, step_in_backward=True, batch_tokens=4096)
    tokenizer = load_tokenizer(config.model)
    rows, _ = assemble_rows(config, tokenizer)
    dataset = to_dataset(rows)
    longest = max(dataset["length"])
    with pytest.raises(ConfigError, match=rf"gradient accumulation is impossible \(--batch-tokens 4096 makes "
                                          rf"{-(-4096 // longest)} micro-batches of 1 x {longest} tokens a step: "
                                          rf"set it to at most {longest} or raise --per-device-rows\)"):
        build_trainer(config, dataset, tokenizer)
    # the CLI: the flag exists and the clipping conflict is a usage error naming both flags
    code = longscale_main(["finetune", "--model", str(tiny_llama_dir), "--output", str(tmp_path / "cli"),
                           "--short-data", data["short_data"][0], "--step-in-backward", "--grad-clip", "1",
                           "--prepare-only"])
    assert code == 2 and "--step-in-backward cannot clip" in capsys.readouterr().err
