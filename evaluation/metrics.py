"""Answer metrics: SQuAD-style exact match and token F1, ROUGE-1/2/L and their geometric mean (rouge-score,
Porter stemmer), multiple-choice accuracy, and RULER's substring match.

Every metric takes one prediction and a list of references and returns the best score over the references
(the usual convention for NarrativeQA, Qasper and ZeroSCROLLS). Scores are in [0, 1].
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(ref) for ref in references))


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: list[str]) -> float:
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(ref).split()) for ref in references), default=0.0)


def substring_match(prediction: str, references: list[str]) -> float:
    """RULER's QA score (string_match_part): 1 when any reference occurs, case-insensitively, in the output."""
    pred = prediction.lower()
    return float(any(ref.lower() in pred for ref in references if ref))


@lru_cache(maxsize=1)
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        raise RuntimeError("ROUGE needs the rouge-score package: pip install rouge-score") from exc
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (best reference per metric) and their geometric mean (`rouge_gm`, QMSum's score)."""
    best = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for ref in references:
        scores = _rouge_scorer().score(ref, prediction)
        for key, value in best.items():
            best[key] = max(value, scores[key].fmeasure)
    best["rouge_gm"] = math.prod(best.values()) ** (1 / 3)
    return best


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
                     gold_index: int | None = None) -> dict[str, float]:
    """All scores of one prediction under a task's metric family; the key named `metric` is the primary one."""
    if metric == "accuracy":
        if options is None or gold_index is None:
            raise ValueError("accuracy needs the options and the gold option index")
        return {"accuracy": choice_accuracy(prediction, options, gold_index)}
    if metric == "rouge_gm":
        return rouge(prediction, references)
    scores = {"f1": token_f1(prediction, references), "exact_match": exact_match(prediction, references),
              "substring_match": substring_match(prediction, references)}
    if metric not in scores:
        raise ValueError(f"unknown metric {metric!r}: f1, exact_match, substring_match, rouge_gm or accuracy")
    return scores
