"""The continual pretrainer: exact resume, token budget per step, curriculum, sources, chunked loss."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from longscale.common.configcli import ConfigError, resolve_config
from pretrain.config import PretrainConfig
from pretrain.data import (
    DataSourceError,
    PackedStream,
    SourceSpec,
    build_stream,
    parse_curriculum,
    seq_len_at,
)
from pretrain.loss import chunked_lm_loss, per_token_losses
from pretrain.trainer import lr_lambda, pretrain, step_shape
from tests.pretrain.tiny_llama import save_tiny_llama


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, embedded_model_dir):
    """A tiny random Llama with the embedded model's real tokenizer."""
    out = tmp_path_factory.mktemp("tinytrain") / "model"
    return save_tiny_llama(out, embedded_model_dir, max_positions=64, rope_theta=10_000.0)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    words = "the quick brown fox jumps over the lazy dog and runs into the forest where owls sing".split()
    for i in range(3):
        (d / f"doc{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(400 + 300 * i)))
    return d


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_reproduces_the_loss_trajectory_exactly(tiny_model, text_dir, tmp_path):
    base = dict(model=str(tiny_model), variant="xpos-abf", rope_base=1e5, source=[f"books={text_dir}:1"],
                seq_len=128, tokens_per_step=512, max_micro_batch=2, total_tokens=512 * 6, learning_rate=1e-3,
                warmup_steps=2, device="cpu")
    pretrain(PretrainConfig(**base, output=str(tmp_path / "straight")), show_progress=False)
    pretrain(PretrainConfig(**base, output=str(tmp_path / "split"), max_steps=3), show_progress=False)
    summary = pretrain(PretrainConfig(**base, output=str(tmp_path / "split"), resume=True), show_progress=False)
    assert summary["resumed_from"].endswith("step-0000003")
    straight, split = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert len(straight) == 6 and straight == split  # bitwise: model, optimizer, schedule, RNG, data position
    assert straight[-1] < straight[0]
    assert (tmp_path / "straight" / "loss_curve.png").stat().st_size > 1000
    cfg = json.loads((tmp_path / "straight" / "final" / "config.json").read_text())
    assert cfg["model_type"] == "xpos_llama" and cfg["rope_theta"] == 1e5 and cfg["max_position_embeddings"] == 128


def test_same_tokens_per_step_at_every_length_and_curriculum(tiny_model, text_dir, tmp_path):
    cfg = PretrainConfig(model=str(tiny_model), output=str(tmp_path / "cur"), variant="pi", source=[str(text_dir)],
                         seq_len=256, curriculum="64:0.5,256", tokens_per_step=512, max_micro_batch=4,
                         total_tokens=512 * 4, learning_rate=1e-3, warmup_steps=0, device="cpu")
    pretrain(cfg, show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "cur" / "metrics.jsonl").read_text().splitlines()]
    assert [r["seq_len"] for r in rows] == [64, 64, 256, 256]
    assert all(r["micro_batch"] * r["accumulation"] * r["seq_len"] == 512 for r in rows)
    assert [(r["micro_batch"], r["accumulation"]) for r in rows] == [(4, 2), (4, 2), (2, 1), (2, 1)]


def test_step_shape_and_schedule():
    assert step_shape(4_194_304, 4096, 8) == (8, 128)
    assert step_shape(4_194_304, 32768, 8) == (8, 16)
    assert step_shape(65536, 32768, 1, world=2) == (1, 1)
    with pytest.raises(ValueError):
        step_shape(1000, 300, 1)
    f = lr_lambda(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def test_curriculum_parsing():
    stages = parse_curriculum("4096:0.2,32768", 32768)
    assert stages == [(4096, 0.2), (32768, 1.0)]
    assert seq_len_at(stages, 0, 100) == 4096 and seq_len_at(stages, 20, 100) == 32768
    for bad in ("4096:0.5,8192:0.3,16384", "x:0.2,1", "4096:0.2,8192:0.5"):
        with pytest.raises(ValueError):
            parse_curriculum(bad, 1)


def test_bad_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\noutput: o\nseq_len: 3000\ntokens_per_step: 4096\ntotal_tokens: 8192\n")
    with pytest.raises(ConfigError, match="not a multiple"):
        resolve_config(PretrainConfig, yaml_path=bad)
    bad.write_text("model: m\noutput: o\n")
    with pytest.raises(ConfigError, match="total-tokens"):
        resolve_config(PretrainConfig, yaml_path=bad)


def test_sources_jsonl_parquet_txt_weights_and_long_upsampling(tmp_path, embedded_model_dir):
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "alpha " * 50}) + "\n\n" + json.dumps({"text": "beta"}) + "\n")
    pq.write_table(pa.table({"text": ["gamma " * 10]}), tmp_path / "c.parquet")
    stream = build_stream([f"j={tmp_path / 'a.jsonl'}:2", f"p={tmp_path / 'c.parquet'}:0.5"], tok,
                          long_doc_tokens=40, long_upsample=3, show_progress=False)
    assert len(stream.docs) == 3 and stream.weights == [2, 2, 0.5]
    order = stream.epoch_order(0)
    assert order.count(0) == 6 and order.count(1) == 2 and order.count(2) in (0, 1)  # long doc x2 x3
    seq = stream.next_sequence(200)
    assert seq.shape == (200,) and (seq == tok.eos_token_id).sum() >= 1
    assert SourceSpec.parse(f"{tmp_path / 'a.jsonl'}").weight == 1.0
    with pytest.raises(DataSourceError, match="does not exist"):
        SourceSpec.parse("x=/nonexistent/path:1")
    (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
    with pytest.raises(DataSourceError, match="bad.jsonl:1"):
        build_stream([str(tmp_path / "bad.jsonl")], tok, show_progress=False)


def test_stream_resumes_on_the_next_token():
    stream = PackedStream([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [1, 1, 1], eos_id=0, seed=3)
    first = [stream.next_sequence(4) for _ in range(3)]
    state = stream.state_dict()
    rest = [stream.next_sequence(5) for _ in range(4)]
    again = PackedStream([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [1, 1, 1], eos_id=0, seed=3)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(rest, [again.next_sequence(5) for _ in range(4)]))
    # first + rest is the documents of epoch 0, 1, 2 in their seeded order, each followed by EOS, cut nowhere else
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    expected = [t for epoch in range(3) for i in again.epoch_order(epoch) for t in docs[i] + [0]]
    assert torch.cat(first + rest).tolist() == expected[:32]


def test_chunked_loss_equals_full_cross_entropy():
    torch.manual_seed(0)
    h = torch.randn(2, 33, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    x = torch.randint(0, 50, (2, 33))
    loss = chunked_lm_loss(h, w, x, chunk=7)
    loss.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = F.cross_entropy((h[:, :-1] @ w.T).reshape(-1, 50), x[:, 1:].reshape(-1))
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gw, w.grad, atol=1e-6)
    per = per_token_losses(h, w, x, chunk=5)
    assert per.shape == (2, 32) and torch.allclose(per.mean(), ref, atol=1e-5)


def _params(folder) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {k: v.detach() for k, v in AutoModelForCausalLM.from_pretrained(folder).named_parameters()}


def _assert_same_params(got: dict, want: dict, atol: float) -> None:
    assert got.keys() == want.keys() and all(got[k].shape == want[k].shape for k in want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=atol, msg=name)


def test_fsdp_two_ranks_match_one_device_and_resume_in_one_process(tiny_model, text_dir, tmp_path):
    """torchrun with 2 CPU ranks (gloo, FSDP2) sees the same tokens per step and the same losses; what it saves
    (full state dicts gathered to rank 0) loads in one process, and a one-process resume of its checkpoint
    continues the one-device trajectory. Tolerances: fp32, only reduction order differs (measured ~1e-7 on
    losses, ~2e-7 on weights); dropping the optimizer state at the resume moves the weights by ~2e-3. Attention
    is our registered `flash` kernel (pretrain/attention.py), so it runs under FSDP2 as well."""
    base = dict(model=str(tiny_model), variant="abf", rope_base=1e5, source=[str(text_dir)], seq_len=128,
                tokens_per_step=512, max_micro_batch=2, total_tokens=2048, learning_rate=1e-3, warmup_steps=1, device="cpu",
                attn_implementation="flash")
    script = tmp_path / "run.py"
    script.write_text("import json, sys\nfrom pretrain.config import PretrainConfig\nfrom pretrain.trainer import pretrain\n"
                      "pretrain(PretrainConfig(**json.loads(sys.argv[2]), output=sys.argv[1], max_steps=2),"
                      " show_progress=False)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(script),
                           str(tmp_path / "fsdp"), json.dumps(base)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    pretrain(PretrainConfig(**base, output=str(tmp_path / "single"), save_steps=2), show_progress=False)
    sharded, alone = _losses(tmp_path / "fsdp"), _losses(tmp_path / "single")
    assert len(sharded) == 2 and len(alone) == 4 and sharded == pytest.approx(alone[:2], rel=1e-4)
    # the final model written under FSDP (after step 2) is a plain HF folder equal to the one-device step 2
    _assert_same_params(_params(tmp_path / "fsdp" / "final"),
                        _params(tmp_path / "single" / "checkpoints" / "step-0000002"), atol=1e-5)

    shutil.copytree(tmp_path / "fsdp", tmp_path / "resumed")
    summary = pretrain(PretrainConfig(**base, output=str(tmp_path / "resumed"), resume=True), show_progress=False)
    assert summary["resumed_from"].endswith("step-0000002") and summary["steps"] == 4
    assert _losses(tmp_path / "resumed") == pytest.approx(alone, rel=1e-4)
    _assert_same_params(_params(tmp_path / "resumed" / "final"), _params(tmp_path / "single" / "final"), atol=1e-5)


def test_output_is_protected_resume_checks_the_recipe_and_the_budget_holds(tiny_model, text_dir, tmp_path):
    from longscale.common.outputs import OutputFolderError

    base = dict(model=str(tiny_model), variant="abf", source=[str(text_dir)], seq_len=64, tokens_per_step=128,
                total_tokens=128 * 2 + 100, warmup_steps=2000, learning_rate=1e-3, device="cpu", output=str(tmp_path / "run"))
    summary = pretrain(PretrainConfig(**base), show_progress=False)
    # 356 tokens of budget = 2 whole steps (a third step would pass the budget); the 2,000-step warm-up, longer
    # than the run, is cut to a tenth of it (0 steps) instead of keeping the lr near zero
    assert summary["steps"] == 2 and summary["tokens"] == 256 <= base["total_tokens"] and summary["warmup_steps"] == 0
    with pytest.raises(OutputFolderError, match="already holds files .*--resume.*--overwrite"):
        pretrain(PretrainConfig(**base), show_progress=False)
    with pytest.raises(OutputFolderError, match=r"other settings \(--variant: 'abf' -> 'none', --seq-len: 64 -> 32\)"):
        pretrain(PretrainConfig(**base | {"variant": "none", "seq_len": 32}, resume=True), show_progress=False)
    replaced = pretrain(PretrainConfig(**base | {"variant": "none"}, overwrite=True), show_progress=False)
    assert replaced["resumed_from"] is None and replaced["steps"] == 2
    cfg = json.loads((tmp_path / "run" / "final" / "config.json").read_text())
    assert cfg["rope_theta"] == 10_000.0  # the replacing run's variant, not the old run's ABF
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputFolderError, match="--output .*a-file is a file, not a folder"):
        pretrain(PretrainConfig(**base | {"output": str(tmp_path / "a-file")}), show_progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="does not look like a pretraining run folder"):
        pretrain(PretrainConfig(**base | {"output": str(tmp_path / "notes")}, overwrite=True), show_progress=False)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tiny_model, text_dir, tmp_path, capsys):
    from longscale.commands.main import main

    code = main(["pretrain", "--model", str(tiny_model), "--output", str(tmp_path / "log"), "--variant", "abf",
                 "--source", str(text_dir), "--seq-len", "64", "--tokens-per-step", "128", "--total-tokens", "256",
                 "--warmup-steps", "0", "--device", "cpu"])
    err = capsys.readouterr().err  # captured: not a terminal, as a log file or CI
    assert code == 0
    assert "\r" not in err and "\x1b" not in err  # no bar redrawn in place, ours or transformers' "Loading weights"
    steps = [line for line in err.splitlines() if line.startswith("pretrain: ")]
    assert [s.split(",")[0] for s in steps] == ["pretrain: 1/2 step", "pretrain: 2/2 step"]  # the first, the last
    assert all(", loss=" in s and ", tok_s=" in s for s in steps)
    assert any(line.startswith("tokenizing ") and line.endswith("3/3 doc") for line in err.splitlines())
