"""A loader per format, on small fixtures written here in each dataset's standard layout."""
import json

import pytest

from evaluation.tasks import (
    FILE_LOADERS,
    TaskDataError,
    load_factory_qa,
    zeroscrolls_metric,
)
from tests.instance_records import instance_record


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_narrativeqa_hf_rows(tmp_path):
    f = write_jsonl(tmp_path / "nqa.jsonl", [{"document": {"id": "d1", "kind": "gutenberg", "text": "Story text."},
                                              "question": {"text": "Who?", "tokens": ["Who", "?"]},
                                              "answers": [{"text": "Ann"}, {"text": "Ann Smith"}]}])
    [ex], skipped = FILE_LOADERS["narrativeqa"](f)
    assert (ex.context, ex.question, ex.answers, ex.metric, skipped) == ("Story text.", "Who?", ["Ann", "Ann Smith"], "f1", 0)


def test_qasper_release_json(tmp_path):
    paper = {"title": "T", "abstract": "Abs.", "full_text": [{"section_name": "Intro", "paragraphs": ["P1.", "P2."]}],
             "qas": [{"question": "Which data?", "question_id": "q1", "answers": [
                 {"answer": {"unanswerable": False, "extractive_spans": ["SQuAD", "CoQA"], "yes_no": None,
                             "free_form_answer": "", "evidence": []}},
                 {"answer": {"unanswerable": False, "extractive_spans": [], "yes_no": None,
                             "free_form_answer": "two QA sets", "evidence": []}}]},
                     {"question": "Is it new?", "question_id": "q2", "answers": [
                         {"answer": {"unanswerable": False, "extractive_spans": [], "yes_no": True,
                                     "free_form_answer": "", "evidence": []}}]},
                     {"question": "Cost?", "question_id": "q3", "answers": [
                         {"answer": {"unanswerable": True, "extractive_spans": [], "yes_no": None,
                                     "free_form_answer": "", "evidence": []}}]},
                     {"question": "No answers", "question_id": "q4", "answers": []}]}
    f = tmp_path / "qasper-dev.json"
    f.write_text(json.dumps({"paper1": paper}))
    examples, skipped = FILE_LOADERS["qasper"](f)
    assert [e.answers for e in examples] == [["SQuAD, CoQA", "two QA sets"], ["Yes"], ["Unanswerable"]]
    assert skipped == 1 and "Intro\nP1.\nP2." in examples[0].context and examples[0].context.startswith("T\n\nAbs.")


def test_quality_release_jsonl(tmp_path):
    f = write_jsonl(tmp_path / "QuALITY.dev", [{"article_id": "a1", "title": "T", "article": "Long article.",
                                                "questions": [{"question": "Why?", "options": ["w", "x", "y", "z"],
                                                               "gold_label": 3, "question_unique_id": "a1_q1"},
                                                              {"question": "Test split", "options": ["w", "x"],
                                                               "question_unique_id": "a1_q2"}]}])
    f = f.rename(tmp_path / "quality.jsonl")
    [ex], skipped = FILE_LOADERS["quality"](f)
    assert (ex.gold_index, ex.answers, ex.metric, skipped) == (2, ["y"], "exact_match", 1)
    assert "(C) y" in ex.question_text()


def test_qmsum_meeting(tmp_path):
    meeting = {"topic_list": [], "general_query_list": [{"query": "Summarize.", "answer": "They met."}],
               "specific_query_list": [{"query": "What about X?", "answer": "X is fine.", "relevant_text_span": [["0", "1"]]}],
               "meeting_transcripts": [{"speaker": "A", "content": "Hello."}, {"speaker": "B", "content": "Hi."}]}
    d = tmp_path / "test"
    d.mkdir()
    (d / "meeting1.json").write_text(json.dumps(meeting))
    examples, _ = FILE_LOADERS["qmsum"](d)
    assert [e.question for e in examples] == ["Summarize.", "What about X?"]
    assert examples[0].context == "A: Hello.\nB: Hi." and examples[1].metric == "rouge_gm"


def test_zeroscrolls_indices_and_metric_by_subset(tmp_path):
    text = "Instructions.\n\nDocument: the document body.\n\nQuestion: what body?\n\nAnswer:"
    ds, de = text.index("the document"), text.index("body.") + 5
    qs, qe = text.index("what body?"), text.index("what body?") + len("what body?")
    f = write_jsonl(tmp_path / "narrative_qa_validation.jsonl",
                    [{"id": "z1", "pid": "z1_0", "input": text, "output": "the document", "document_start_index": ds,
                      "document_end_index": de, "query_start_index": qs, "query_end_index": qe,
                      "truncation_seperator": "... [The rest is omitted]\n\n"},
                     {"id": "z2", "pid": "z2_0", "input": text, "output": None}])
    [ex], skipped = FILE_LOADERS["zeroscrolls"](f)
    assert (ex.context, ex.question, ex.answers, skipped) == ("the document body.", "what body?", ["the document"], 1)
    assert zeroscrolls_metric("zero_scrolls/gov_report/validation.jsonl") == "rouge_gm"
    assert zeroscrolls_metric("quality_test.jsonl") == "exact_match"


def test_factory_instances(tmp_path):
    rec = instance_record("r1", "b1", "The kept book text.", "Who wrote it?", "Darcy",
                          user='You are given a long text. """ The kept book text. """ Question: Who wrote it?')
    write_jsonl(tmp_path / "instances.jsonl", [rec])
    [ex], _ = load_factory_qa(tmp_path)
    assert (ex.context, ex.question, ex.answers) == ("The kept book text.", "Who wrote it?", ["Darcy"])


def test_bad_files_say_what_is_wrong(tmp_path):
    with pytest.raises(TaskDataError, match="no such file"):
        FILE_LOADERS["quality"](tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"article": "x", "questions": []}\n{not json\n')
    with pytest.raises(TaskDataError, match=r"bad.jsonl:2: not valid JSON"):
        FILE_LOADERS["quality"](bad)
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"text": "hello"}])
    with pytest.raises(TaskDataError, match=r"not a NarrativeQA record: expected keys"):
        FILE_LOADERS["narrativeqa"](wrong)
