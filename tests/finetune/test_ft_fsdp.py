"""`longscale finetune` under `accelerate launch` with FSDP2 on 2 CPU ranks (gloo) against one process.

Data: 24 short samples packed into 12 rows of 128 tokens and `--batch-tokens 1536`, so every optimizer step is
the whole data set in both runs (12 micro-batches in one process, 2 x 6 under FSDP): the global batch is the
same set of rows whatever order the samplers pick. fp32 throughout; what differs is only the order of the
gradient sums (accumulation in one process vs accumulation + reduce-scatter): measured 0.9e-7 to 1.1e-7
relative per step, a few fp32 ulps. Tolerance 1e-4 relative on the losses: room for Adam to amplify those
roundings over 3 steps at lr 1e-2, and 10x below what a wrong global batch gives (half the rows per step,
one process: 1.2e-3, 2.5e-3, 1.0e-3 relative on the three losses).
The FSDP run goes through `-m longscale.commands.cpu_fsdp` (the same CLI; accelerate 1.15 enables FSDP only on
accelerators, so on CPU the plain entry point would train under DDP: docs/distributed.md).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_short

REPO = Path(__file__).resolve().parents[2]
GLOO_CONFIG = REPO / "configs" / "fsdp" / "cpu_gloo_2proc.yaml"
LOSS_RTOL = 1e-4
PARAM_ATOL = 1e-5  # a thousandth of one Adam step (lr 1e-2)


def finetune_args(model: Path, short: Path, output: Path) -> list[str]:
    return ["finetune", "--model", str(model), "--short-data", str(short), "--output", str(output),
            "--pack-length", "128", "--batch-tokens", "1536", "--max-steps", "3", "--learning-rate", "1e-2",
            "--warmup-ratio", "0", "--save-steps", "1000", "--seed", "0"]


def run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def losses(output: Path) -> list[float]:
    return [h["loss"] for h in json.loads((output / "train_log.json").read_text()) if "loss" in h]


@pytest.mark.slow
def test_fsdp_two_cpu_ranks_match_one_process_and_the_model_loads_alone(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    short = write_short(tmp_path / "short.jsonl", 24)
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    run([sys.executable, "-m", "longscale.commands.main", *finetune_args(tiny_llama_dir, short, single)], REPO)
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(GLOO_CONFIG),
         "-m", "longscale.commands.cpu_fsdp", *finetune_args(tiny_llama_dir, short, sharded)], REPO)

    # the run really was FSDP on 2 ranks: accelerate's FSDP checkpoint files, one RNG state per rank,
    # and half the accumulation steps for the same tokens per optimizer step
    checkpoint = sharded / "checkpoints" / "checkpoint-3"
    assert {"pytorch_model_fsdp.bin", "optimizer.bin", "rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in checkpoint.iterdir()}
    accumulation = [json.loads((out / "finetune_result.json").read_text())["training"]["gradient_accumulation_steps"]
                    for out in (single, sharded)]
    assert accumulation == [12, 6]

    alone, fsdp = losses(single), losses(sharded)
    assert len(alone) == len(fsdp) == 3 and fsdp[-1] < fsdp[0]
    assert fsdp == pytest.approx(alone, rel=LOSS_RTOL)

    # the final model gathered under FSDP is a plain HF folder: it loads in this one process and matches
    reference = AutoModelForCausalLM.from_pretrained(single / "final")
    gathered = AutoModelForCausalLM.from_pretrained(sharded / "final")
    ref_params, got_params = dict(reference.named_parameters()), dict(gathered.named_parameters())
    assert ref_params.keys() == got_params.keys()
    for name, param in ref_params.items():
        assert got_params[name].shape == param.shape, name
        torch.testing.assert_close(got_params[name], param, rtol=0, atol=PARAM_ATOL, msg=name)
    moved = max((p - q).abs().max().item() for p, q in zip(reference.parameters(), AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir).parameters()))
    assert moved > 100 * PARAM_ATOL  # training moved the weights far more than the tolerance
    ids = torch.randint(0, reference.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(gathered(ids).logits, reference(ids).logits, rtol=0, atol=1e-4)
