"""Answer metrics, each equal to a benchmark's own scoring script (docs/evaluation.md has the table per task).

- Token F1 and exact match: SQuAD v1.1's `evaluate-v1.1.py` (lower case, drop ASCII punctuation, drop the
  articles a/an/the, collapse whitespace; best over the references). F1 is 0 when no token is shared, so a
  prediction and a reference that both normalise to empty score F1 0 (and exact match 1), as that script does.
  The same F1 is LongBench's `qa_f1_score` and SCROLLS' `f1`.
- ZeroSCROLLS F1 / exact match (`fold_accents=True`): the same, with unidecode applied to the normalised
  text (after punctuation and articles are gone: "Thé" stays a word, "“" becomes a kept '"').
- ROUGE: SCROLLS / ZeroSCROLLS convention: rouge-score's ROUGE-1/2/L F-measure WITHOUT stemming, each type's
  best reference on its own; a task's score is the geometric mean of the averaged R1/R2/RL (`aggregate`),
  not the mean of per-item geometric means. Scores stay in [0, 1] (the scripts print 100x).
- Multiple-choice accuracy (letter or option text) and RULER's substring match.
The trade-off: every metric reads the whole answer, like the scripts; the paper's first-line rule is an
option of the runner (`answer_scope`), not the default.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache

METRICS = ("f1", "exact_match", "substring_match", "rouge_gm", "accuracy")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str, fold_accents: bool = False) -> str:
    """SQuAD normalisation; `fold_accents` then transliterates to ASCII (ZeroSCROLLS)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = " ".join(_ARTICLES.sub(" ", text).split())
    return _unidecode()(text) if fold_accents else text


@lru_cache(maxsize=1)
def _unidecode():
    try:
        from unidecode import unidecode
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        raise RuntimeError("ZeroSCROLLS F1 folds accents with unidecode: pip install 'longscale[eval]'") from exc
    return unidecode


def exact_match(prediction: str, references: list[str], fold_accents: bool = False) -> float:
    pred = normalize_answer(prediction, fold_accents)
    return float(any(pred == normalize_answer(ref, fold_accents) for ref in references))


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: list[str], fold_accents: bool = False) -> float:
    pred = normalize_answer(prediction, fold_accents).split()
    return max((_f1(pred, normalize_answer(ref, fold_accents).split()) for ref in references), default=0.0)


def substring_match(prediction: str, references: list[str]) -> float:
    """RULER's QA score (string_match_part): 1 when any reference occurs, case-insensitively, in the output."""
    pred = prediction.lower()
    return float(any(ref.lower() in pred for ref in references if ref))


@lru_cache(maxsize=1)
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        raise RuntimeError("ROUGE needs the rouge-score package: pip install 'longscale[eval]'") from exc
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measures, each the best over the references, plus this item's own geometric mean
    (`rouge_gm`, for the records; a task's score comes from `aggregate`)."""
    best = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref in references:
        scores = _rouge_scorer().score(ref, prediction)
        for key in ROUGE_TYPES:
            best[key] = max(best[key], scores[key].fmeasure)
    best["rouge_gm"] = geometric_mean(best[k] for k in ROUGE_TYPES)
    return best


def geometric_mean(values: Iterable[float]) -> float:
    values = list(values)
    return math.prod(values) ** (1 / len(values))


def aggregate(items: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over the items; `rouge_gm` is the geometric mean of the averaged R1/R2/RL (SCROLLS)."""
    if not items:
        return {}
    means = {key: sum(item[key] for item in items) / len(items) for key in items[0]}
    if all(key in means for key in ROUGE_TYPES):
        means["rouge_gm"] = geometric_mean(means[k] for k in ROUGE_TYPES)
    return means


_SCRIPTS = {"f1": "SQuAD v1.1 token F1 (= SCROLLS f1, LongBench qa_f1)",
            "exact_match": "SQuAD v1.1 / SCROLLS exact match",
            "rouge_gm": "SCROLLS / ZeroSCROLLS ROUGE: geometric mean of averaged R1/R2/RL, no stemming",
            "accuracy": "choice accuracy: the gold option's letter or text (no benchmark script)",
            "substring_match": "RULER string_match_part"}


def scoring_name(metric: str, fold_accents: bool = False) -> str:
    """Which official script a metric equals, for results tables."""
    if fold_accents and metric in ("f1", "exact_match"):
        return f"ZeroSCROLLS {'F1' if metric == 'f1' else 'exact match'} (SQuAD normalisation + unidecode)"
    return _SCRIPTS[metric]


_LETTER = re.compile(r"^(?:answer\s*(?:is)?\s*:?\s*)?(?:\(([A-Z])\)|([A-Z])(?:[.:)]|$))", re.IGNORECASE)


def choice_accuracy(prediction: str, options: list[str], gold_index: int) -> float:
    """1 if the prediction picks the gold option: by its letter ("B", "(B)", "B. ...", "Answer: B") or else by
    containing exactly one option's text (a reply naming two options scores 0)."""
    labels = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:len(options)]
    match = _LETTER.match(prediction.strip())
    letter = (match.group(1) or match.group(2)).upper() if match else None
    if letter and letter in labels:
        return float(labels.index(letter) == gold_index)
    pred = normalize_answer(prediction)
    hits = [i for i, opt in enumerate(options) if normalize_answer(opt) and normalize_answer(opt) in pred]
    return float(hits == [gold_index])


def score_prediction(metric: str, prediction: str, references: list[str], options: list[str] | None = None,
                     gold_index: int | None = None, fold_accents: bool = False) -> dict[str, float]:
    """All scores of one prediction under a task's metric family; the key named `metric` is the primary one.
    A multiple-choice item (options and gold index given) also gets `accuracy` beside F1/EM."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: {', '.join(METRICS)}")
    if metric == "rouge_gm":
        return rouge(prediction, references)
    choice = options is not None and gold_index is not None
    if metric == "accuracy" and not choice:
        raise ValueError("accuracy needs the options and the gold option index")
    scores = {"f1": token_f1(prediction, references, fold_accents),
              "exact_match": exact_match(prediction, references, fold_accents),
              "substring_match": substring_match(prediction, references)}
    if options is not None and gold_index is not None:
        scores["accuracy"] = choice_accuracy(prediction, options, gold_index)
    return scores
