"""Metric values on hand-computed cases."""
import math

import pytest

from evaluation.metrics import (
    choice_accuracy,
    exact_match,
    normalize_answer,
    rouge,
    score_prediction,
    substring_match,
    token_f1,
)


def test_normalisation_drops_case_punctuation_articles():
    assert normalize_answer("The  Cat, sat!  on a mat.") == "cat sat on mat"


def test_exact_match_after_normalisation_best_reference():
    assert exact_match("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower", "tower"]) == 0.0


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


def test_rouge_uses_stemming():
    assert rouge("cats running", ["cat runs"])["rouge1"] == pytest.approx(1.0)


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
    assert math.isclose(score_prediction("rouge_gm", "a b", ["a b"])["rouge_gm"], 1.0)
    with pytest.raises(ValueError, match="options"):
        score_prediction("accuracy", "A", ["x"])
    with pytest.raises(ValueError, match="unknown metric"):
        score_prediction("bleu", "A", ["x"])
