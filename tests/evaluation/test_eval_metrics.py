"""Metric values on hand-computed cases."""
import math

import pytest

from evaluation.metrics import (
    aggregate,
    choice_accuracy,
    exact_match,
    normalize_answer,
    rouge,
    score_prediction,
    scoring_name,
    substring_match,
    token_f1,
)


def test_normalisation_drops_case_punctuation_articles():
    assert normalize_answer("The  Cat, sat!  on a mat.") == "cat sat on mat"


def test_exact_match_after_normalisation_best_reference():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower", "tower"]) == 0.0
    assert exact_match("", [""]) == 1.0 and exact_match("The.", ["a"]) == 1.0  # SQuAD: both normalise to ""


def test_empty_vs_empty_scores_f1_zero_as_squad_does():
    # evaluate-v1.1.py returns 0 when no token is shared, so a failed request ("") never scores F1 1.0
    assert token_f1("", [""]) == 0.0 and token_f1("the", ["an"]) == 0.0 and token_f1("", ["x"]) == 0.0
    assert token_f1("x", []) == 0.0


def test_zeroscrolls_folds_accents_after_normalising():
    assert token_f1("Café Zürich", ["cafe zurich"]) == 0.0
    assert token_f1("Café Zürich", ["cafe zurich"], fold_accents=True) == 1.0
    assert normalize_answer("Thé “cat”", fold_accents=True) == 'the "cat"'  # folded after articles/punctuation went
    assert exact_match("naïve", ["naive"], fold_accents=True) == 1.0 and exact_match("naïve", ["naive"]) == 0.0


def test_token_f1_hand_computed():
    # pred {cat, sat}, ref {cat, sat, down}: precision 1, recall 2/3 -> F1 0.8
    assert token_f1("The cat sat", ["a cat sat down"]) == pytest.approx(0.8)
    # best over references; disjoint answer scores 0
    assert token_f1("Paris", ["London", "paris"]) == 1.0
    assert token_f1("Berlin", ["London"]) == 0.0
    # repeated tokens count once per occurrence: pred [a?] -> "cat cat" vs "cat": P 1/2, R 1 -> 2/3
    assert token_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)


def test_rouge_hand_computed():
    # unigrams: 5 of 6 shared (P = R = 5/6); bigrams: 3 of 5 (the cat, on the, the mat); LCS 5 of 6
    r = rouge("the cat sat on the mat", ["the cat was on the mat"])
    assert r["rouge1"] == pytest.approx(5 / 6)
    assert r["rouge2"] == pytest.approx(3 / 5)
    assert r["rougeL"] == pytest.approx(5 / 6)
    assert r["rouge_gm"] == pytest.approx(((5 / 6) * (3 / 5) * (5 / 6)) ** (1 / 3))
    assert rouge("completely different words", ["the cat"])["rouge_gm"] == 0.0


def test_rouge_does_not_stem_like_scrolls():
    assert rouge("cats running", ["cat runs"])["rouge1"] == 0.0
    assert rouge("cats running", ["cats running"])["rouge1"] == 1.0


def test_rouge_best_reference_per_type_and_corpus_geometric_mean():
    # ref 1 wins R1 (3/4 shared unigrams), ref 2 wins R2 (the only shared bigram "b c")
    r = rouge("a b c d", ["d c a x", "b c"])
    assert r["rouge1"] == pytest.approx(max(0.75, 2 * (2 / 4) * 1 / (2 / 4 + 1)))
    assert r["rouge2"] == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    items = [{"rouge1": 0.5, "rouge2": 0.0, "rougeL": 0.5, "rouge_gm": 0.0},
             {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5, "rouge_gm": 0.5}]
    agg = aggregate(items)
    # SCROLLS: gm(mean R1, mean R2, mean RL) = (0.5 * 0.25 * 0.5) ** (1/3), not mean of per-item gm (0.25)
    assert agg["rouge_gm"] == pytest.approx((0.5 * 0.25 * 0.5) ** (1 / 3)) and agg["rouge1"] == 0.5
    assert aggregate([{"f1": 1.0}, {"f1": 0.0}]) == {"f1": 0.5} and aggregate([]) == {}


def test_choice_accuracy_by_letter_or_text():
    options = ["a dog", "a cat", "a bird", "a fish"]
    assert choice_accuracy("(B)", options, 1) == 1.0
    assert choice_accuracy("B. a cat", options, 1) == 1.0
    assert choice_accuracy("Answer: C", options, 1) == 0.0
    assert choice_accuracy("I think it is a cat.", options, 1) == 1.0
    assert choice_accuracy("a cat or a dog", options, 1) == 0.0  # two options named: not a choice


def test_substring_match_is_rulers_part_match():
    assert substring_match("It was in 1066, I believe", ["1066"]) == 1.0
    assert substring_match("no idea", ["1066", "eleven"]) == 0.0


def test_score_prediction_families_and_errors():
    assert set(score_prediction("f1", "x", ["x"])) == {"f1", "exact_match", "substring_match"}
    quality = score_prediction("exact_match", "(B)", ["a cat"], ["a dog", "a cat"], 1)
    assert quality["exact_match"] == 0.0 and quality["accuracy"] == 1.0  # SCROLLS EM reads the option text
    assert "unidecode" in scoring_name("f1", fold_accents=True) and "qa_f1" in scoring_name("f1")
    assert math.isclose(score_prediction("rouge_gm", "a b", ["a b"])["rouge_gm"], 1.0)
    with pytest.raises(ValueError, match="options"):
        score_prediction("accuracy", "A", ["x"])
    with pytest.raises(ValueError, match="unknown metric"):
        score_prediction("bleu", "A", ["x"])
