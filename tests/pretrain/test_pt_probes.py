"""Each probe scores model-free oracles correctly (a right one gets full marks, a wrong one none)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from longscale.common.text import normalize, parse_lengths, split_sentences
from pretrain.probes.first_sentence import (
    PLAIN_HEAD,
    PLAIN_TAIL,
    run_first_sentence,
    score,
)
from pretrain.probes.losses import (
    context_scaling,
    fit_power_law,
    loss_by_position,
    token_windows,
)
from pretrain.probes.passkey import run_passkey
from pretrain.probes.rope_decay import decay_curve, rope_decay

CORPUS = Path(__file__).resolve().parents[2] / "datafactory" / "sample_corpus" / "persuasion.txt"


@pytest.fixture(scope="module")
def tok(embedded_model_dir):
    return AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture(scope="module")
def texts():
    return [CORPUS.read_text()[:120_000]]  # the repo's own sample corpus


def _document(tok, prompt_ids):
    text = tok.decode(prompt_ids)
    return text.split(PLAIN_HEAD.strip(), 1)[1].split(PLAIN_TAIL.strip()[:20], 1)[0]


def test_first_sentence_oracles(tok, texts, tmp_path):
    def right(prompts, _n):
        return [split_sentences(_document(tok, p))[0] + '" and then more text.' for p in prompts]

    def wrong(prompts, _n):
        return [split_sentences(_document(tok, p))[1] for p in prompts]

    good = run_first_sentence(right, tok, texts, [512, 1024], samples=4, output=tmp_path, label="oracle",
                              progress=False)
    assert good["accuracy"] == {"512": 1.0, "1024": 1.0}
    assert len({r["prompt_tokens"] for r in good["records"] if r["length"] == 512}) == 1  # one batch, no padding
    assert all(r["prompt_tokens"] <= 512 for r in good["records"] if r["length"] == 512)
    bad = run_first_sentence(wrong, tok, texts, [512], samples=4, progress=False)
    assert bad["accuracy"] == {"512": 0.0}
    saved = json.loads((tmp_path / "first_sentence.json").read_text())
    assert saved["accuracy"]["1024"] == 1.0 and (tmp_path / "first_sentence.png").stat().st_size > 1000


def test_first_sentence_scoring_and_sentence_splitting():
    assert split_sentences("Mr. Elliot came. He sat down! Did Mrs. Clay? Yes.") == [
        "Mr. Elliot came.", "He sat down!", "Did Mrs. Clay?", "Yes."]
    assert score("He had not forgiven Anne Elliot.", 'He had not forgiven  anne Elliot."  What is the last')
    assert score("Anne saw nothing.", "The first sentence of the text is: \"Anne saw nothing. Then")
    assert not score("He had not forgiven Anne Elliot.", "He had not forgiven Anne")
    assert not score("He had not forgiven Anne Elliot.", "He had forgiven Anne Elliot.")
    assert not score("", "")
    assert normalize("“Well,” said she.") == "well said she"
    assert parse_lengths("2k,4k,32768") == [2048, 4096, 32768]
    with pytest.raises(ValueError):
        parse_lengths("2q")


def test_passkey_oracles(tok, tmp_path):
    def right(prompts, _n):
        return [" " + re.search(r"pass key is (\d+)", tok.decode(p)).group(1) + "." for p in prompts]

    res = run_passkey(right, tok, [256, 600], samples=2, output=tmp_path, progress=False)
    assert res["accuracy"] == {"256": 1.0, "600": 1.0}
    assert all(abs(len(tok(r["answer"])["input_ids"])) > 0 for r in res["records"])
    assert run_passkey(lambda ps, _n: ["12"] * len(ps), tok, [256], samples=2, progress=False)["accuracy"] == {"256": 0.0}
    assert (tmp_path / "passkey.png").exists()


def test_loss_by_position_bins_an_oracle(tmp_path):
    windows = [torch.zeros(1, 1001, dtype=torch.long)] * 3
    res = loss_by_position(lambda ids: 1 + torch.arange(ids.shape[1] - 1) / 1000.0, windows, bin_size=250,
                           output=tmp_path, trained_length=500)
    assert [b["end"] for b in res["bins"]] == [250, 500, 750, 1000]
    assert res["bins"][0]["loss"] == pytest.approx(1 + 124.5 / 1000)
    assert res["bins"][-1]["loss"] == pytest.approx(1 + 874.5 / 1000)
    assert (tmp_path / "loss_by_position.png").exists()


def test_context_scaling_recovers_a_known_power_law(tok, texts, tmp_path):
    alpha, beta, gamma = 300.0, 0.6, 1.9

    def oracle(ids):
        c = ids.shape[1]
        return torch.full((c - 1,), (alpha / c) ** beta + gamma)

    res = context_scaling(oracle, texts, tok, [128, 256, 512, 1024, 2048], windows=2, output=tmp_path)
    fit = res["fit"]
    assert fit["beta"] == pytest.approx(beta, rel=0.01) and fit["gamma"] == pytest.approx(gamma, abs=0.01)
    assert fit["alpha"] == pytest.approx(alpha, rel=0.05) and fit["rms"] < 1e-3
    assert (tmp_path / "context_scaling.png").exists()
    assert res["window_losses"]["512"] == pytest.approx([(alpha / 512) ** beta + gamma] * 2)
    with pytest.raises(ValueError):
        fit_power_law([1, 2], [3, 4])
    assert len(token_windows(texts, tok, 256, 3, 0)) == 3


def test_rope_decay_follows_the_formulas(tmp_path):
    d = np.array([0, 1, 1000])
    none = decay_curve("none", 8, 10_000.0, d, abf_base=5e5, pi_factor=4)
    theta = 10_000.0 ** (-np.arange(4) * 2 / 8)
    assert none[0] == pytest.approx(8.0) and none[2] == pytest.approx(2 * np.cos(1000 * theta).sum())
    pi = decay_curve("pi", 8, 10_000.0, d, abf_base=5e5, pi_factor=4)
    assert pi[2] == pytest.approx(2 * np.cos(250 * theta).sum())
    res = rope_decay(output=tmp_path)
    tail = res["mean_abs_score_last_quarter"]
    assert tail["abf"] > tail["none"]  # ABF decays less at long range (Figure 4)
    assert (tmp_path / "rope_decay.png").exists() and math.isclose(res["scores"]["abf"][0], 128.0)
