"""longscale's metrics against each benchmark's official scoring logic, re-implemented here independently
from the scripts' documented behaviour (SQuAD v1.1 evaluate-v1.1.py, LongBench metrics.qa_f1_score,
ZeroSCROLLS f1/exact_match with unidecode, SCROLLS rouge: rouge-score without stemming, max per type over
references, geometric mean of the averaged R1/R2/RL), on a fixture of several hundred (prediction,
references) pairs generated deterministically here: empty strings, several references, unicode, articles,
punctuation. The comparison asks for a max abs difference of exactly 0."""
import json
import random
import re
import string
from collections import Counter

import pytest
from unidecode import unidecode

from datafactory.engines import EngineResult
from evaluation import metrics as ls
from evaluation.config import EvalConfig
from evaluation.runner import run_eval

# ---- independent re-implementations of the official logic -------------------------------------------------

_DROP = str.maketrans("", "", string.punctuation)


def ref_squad_normalise(text):
    text = text.lower().translate(_DROP)
    text = re.sub(r"\b(?:the|an|a)\b", " ", text)
    return " ".join(text.split())


def ref_squad_f1(pred, gold, fold=False):
    norm = (lambda t: unidecode(ref_squad_normalise(t))) if fold else ref_squad_normalise
    p, g = norm(pred).split(), norm(gold).split()
    overlap = Counter(p) & Counter(g)
    n = sum(overlap.values())
    if n == 0:
        return 0.0
    precision, recall = n / len(p), n / len(g)
    return 2 * precision * recall / (precision + recall)


def ref_squad_em(pred, gold, fold=False):
    norm = (lambda t: unidecode(ref_squad_normalise(t))) if fold else ref_squad_normalise
    return float(norm(pred) == norm(gold))


def ref_longbench_qa_f1(pred, gold):
    """LongBench normalises both strings, splits them and runs its token-list f1_score."""
    p, g = ref_squad_normalise(pred).split(), ref_squad_normalise(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def best(fn, pred, golds):
    return max(fn(pred, g) for g in golds)


def ref_rouge_tokens(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def ref_fmeasure(overlap, n_pred, n_ref):
    precision, recall = overlap / max(n_pred, 1), overlap / max(n_ref, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def ref_rouge_n(pred_tokens, ref_tokens, n):
    grams = lambda toks: Counter(zip(*(toks[i:] for i in range(n))))  # noqa: E731
    p, r = grams(pred_tokens), grams(ref_tokens)
    return ref_fmeasure(sum((p & r).values()), sum(p.values()), sum(r.values()))


def ref_rouge_l(pred_tokens, ref_tokens):
    if not pred_tokens or not ref_tokens:
        return 0.0
    row = [0] * (len(pred_tokens) + 1)
    for r in ref_tokens:
        prev_diag = 0
        for j, p in enumerate(pred_tokens, 1):
            keep = row[j]
            row[j] = prev_diag + 1 if r == p else max(row[j], row[j - 1])
            prev_diag = keep
    lcs = row[-1]
    return ref_fmeasure(lcs, len(pred_tokens), len(ref_tokens)) if lcs else 0.0


def ref_rouge_item(pred, golds):
    out = {}
    pt = ref_rouge_tokens(pred)
    for key, fn in (("rouge1", lambda a, b: ref_rouge_n(a, b, 1)), ("rouge2", lambda a, b: ref_rouge_n(a, b, 2)),
                    ("rougeL", ref_rouge_l)):
        out[key] = max(fn(pt, ref_rouge_tokens(g)) for g in golds)
    return out


def ref_scrolls_rouge_gm(items):
    """SCROLLS: average each type over the items, then the geometric mean of the three averages."""
    avg = {k: sum(i[k] for i in items) / len(items) for k in ("rouge1", "rouge2", "rougeL")}
    return (avg["rouge1"] * avg["rouge2"] * avg["rougeL"]) ** (1.0 / 3.0)


# ---- the fixture ------------------------------------------------------------------------------------------

WORDS = ["the", "The", "a", "an", "An", "cat", "Cat's", "sat", "on", "mat", "mats", "running", "ran", "café",
         "Café", "cafe", "naïve", "naive", "Zürich", "Zurich", "straße", "strasse", "Thé", "“quoted”", "quoted",
         "東京", "Москва", "moskva", "—", "1,000", "1000", "3.5", "don't", "dont", "(B)", "B", "x-ray", "xray",
         "Ölfeld", "über", "uber", "théa", "yes", "Yes.", "no", "42", "Paris", "paris!", "...", "«the»", "ﬁne", "fine"]
SEPS = [" ", " ", " ", "  ", "\n", ", ", "-", "\t"]


def _text(rng, pool, n):
    out = ""
    for i in range(n):
        out += (rng.choice(SEPS) if i else "") + rng.choice(pool)
    return out


def fixture_pairs(n=400, seed=13):
    rng = random.Random(seed)
    pairs = [("", [""]), ("", ["cat"]), ("cat", [""]), ("the", ["a"]), ("  ", ["...", "an"]), ("Café", ["cafe"]),
             ("Thé cat", ["the cat"]), ("“quoted”", ['"quoted"']), ("東京", ["東京"]), ("straße", ["strasse", "x"])]
    while len(pairs) < n:
        refs = [_text(rng, WORDS, rng.randint(0, 7)) for _ in range(rng.randint(1, 3))]
        pool = WORDS if rng.random() < 0.3 else (" ".join(refs).split() or WORDS) + WORDS[:6]
        pred = _text(rng, pool, rng.randint(0, 9))
        if rng.random() < 0.08:  # a reference restated: case, punctuation and an article changed
            pred = "The " + rng.choice(refs).upper() + rng.choice([".", "!", "", " ..."])
        pairs.append((pred, refs))
    return pairs


PAIRS = fixture_pairs()


def test_fixture_is_varied():
    assert len(PAIRS) >= 400
    assert sum(p == "" for p, _ in PAIRS) >= 5 and sum(len(r) > 1 for _, r in PAIRS) >= 100
    assert sum(any(ord(c) > 127 for c in p) for p, _ in PAIRS) >= 100
    # not a degenerate fixture: partial matches, perfect matches and misses all occur
    f1s = [best(ref_squad_f1, p, r) for p, r in PAIRS]
    assert sum(0 < f < 1 for f in f1s) > 100 and sum(f == 1 for f in f1s) > 10 and sum(f == 0 for f in f1s) > 50


def test_squad_f1_and_em_equal_official_logic():
    f1 = [ls.token_f1(p, r) - best(ref_squad_f1, p, r) for p, r in PAIRS]
    em = [ls.exact_match(p, r) - best(ref_squad_em, p, r) for p, r in PAIRS]
    assert max(map(abs, f1)) == 0 and max(map(abs, em)) == 0


def test_longbench_qa_f1_equals_official_logic():
    assert max(abs(ls.token_f1(p, r) - best(ref_longbench_qa_f1, p, r)) for p, r in PAIRS) == 0


def test_zeroscrolls_f1_and_em_fold_accents_like_official_logic():
    fold_f1 = lambda p, g: ref_squad_f1(p, g, fold=True)  # noqa: E731
    fold_em = lambda p, g: ref_squad_em(p, g, fold=True)  # noqa: E731
    assert max(abs(ls.token_f1(p, r, fold_accents=True) - best(fold_f1, p, r)) for p, r in PAIRS) == 0
    assert max(abs(ls.exact_match(p, r, fold_accents=True) - best(fold_em, p, r)) for p, r in PAIRS) == 0
    # the folding matters on this fixture (otherwise the comparison above proves nothing about it)
    assert sum(ls.token_f1(p, r, fold_accents=True) != ls.token_f1(p, r) for p, r in PAIRS) > 10


def test_scrolls_rouge_per_item_and_aggregate_equal_official_logic():
    ours = [ls.rouge(p, r) for p, r in PAIRS]
    theirs = [ref_rouge_item(p, r) for p, r in PAIRS]
    for key in ("rouge1", "rouge2", "rougeL"):
        assert max(abs(o[key] - t[key]) for o, t in zip(ours, theirs, strict=True)) == 0, key
    agg = ls.aggregate(ours)
    assert agg["rouge_gm"] - ref_scrolls_rouge_gm(theirs) == 0
    # the convention differs from the old mean of per-item geometric means on this fixture
    assert agg["rouge_gm"] != sum(o["rouge_gm"] for o in ours) / len(ours)


class FixedAnswers:
    """Test double engine: answers each prompt with the prediction fixed for its question."""

    name = model_name = "fixed"

    def __init__(self, answers):
        self.answers = answers

    async def agenerate(self, conversations, params):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            question = max(self.answers, key=lambda q: text.rfind(q))
            out.append(EngineResult(text=self.answers[question], finish_reason="stop"))
        return out

    def close(self):
        pass


def test_qmsum_file_aggregate_equals_scrolls_convention(tmp_path, embedded_model_dir):
    from transformers import AutoTokenizer

    rng = random.Random(5)
    vocab = "meeting team budget design remote control agreed price marketing user interface speech".split()
    queries, answers = [], {}
    for i in range(12):
        gold = " ".join(rng.choice(vocab) for _ in range(rng.randint(4, 12))) + "."
        queries.append({"query": f"Question number {i} about the meeting?", "answer": gold})
        answers[queries[-1]["query"]] = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 14)))
    meeting = {"general_query_list": queries[:4], "specific_query_list": queries[4:],
               "meeting_transcripts": [{"speaker": "A", "content": "We discussed the remote control design."}]}
    data = tmp_path / "qmsum.jsonl"
    data.write_text(json.dumps(meeting) + "\n")
    cfg = EvalConfig(task="qmsum", data=str(data), output=str(tmp_path / "out"), lengths=[512], num_samples=12,
                     max_new_tokens=64)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    result = run_eval(cfg, engine=FixedAnswers(answers), tokenizer=tok, progress=False)
    expected = ref_scrolls_rouge_gm([ref_rouge_item(answers[q["query"]], [q["answer"]]) for q in queries])
    cell = result["by_length"]["512"]
    assert cell["n"] == 12 and cell["score"] - expected == 0
    assert result["metric"] == "rouge_gm" and "geometric mean of averaged" in result["scoring"]
    per_item_mean = sum(json.loads(line)["scores"]["rouge_gm"]
                        for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()) / 12
    assert per_item_mean != pytest.approx(expected, abs=1e-6)  # the old aggregate would have given another figure
