"""The record contracts (longscale.common.instances). Instances: real factory output (JSONL and Parquet)
validates and reads the same in finetune and evaluation; every malformed record is refused with its file, line
and field; the fields the readers need cannot be dropped from the contract. QA pairs: the writer writes exactly
the contract and refuses a record off it before appending anything; iter_qa_pairs reads JSONL and Parquet the
same and names a damaged line; every reject reason the code sets is in the contract. docs/instances.md is
the models'."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from datafactory.config import GenerationConfig
from datafactory.output import OutputWriter, QARecordError, id_prefixes, iter_qa_pairs, leading_id
from datafactory.pipeline import Tokenizers, load_tokenizers, run_generation
from evaluation.tasks import TaskDataError, load_factory_qa
from finetune.sources import DataError, read_long
from longscale.common.instances import (
    REJECT_REASONS,
    LongQAInstance,
    QAPair,
    contract_table,
    parse_instance,
    qa_contract_table,
)
from longscale.common.records import iter_records
from tests.datafactory.test_df_critique_and_targets import ScriptedEngine, config, marked_docs
from tests.instance_records import qa_record

REPO = Path(__file__).resolve().parents[2]
# what finetune's read_long and evaluation's factory-qa take from an instance
READER_FIELDS = ("id", "doc_id", "answer_type", "messages", "question", "answer")


@pytest.fixture(scope="module")
def factory_output(embedded_model_dir, tmp_path_factory) -> Path:
    """A real output folder: real pipeline, writer and finalize (a scripted engine, named as a fake, makes the
    critique accept), two instances from two chunks of one document."""
    out = tmp_path_factory.mktemp("factory")
    tokenizers: Tokenizers = load_tokenizers(GenerationConfig(model=str(embedded_model_dir)))
    manifest = run_generation(marked_docs(1, chars=4000), config(chunks_per_doc=2), out, engine=ScriptedEngine(),
                              progress=False, tokenizers=tokenizers)
    assert manifest["counts"]["instances"] == 2
    return out


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "instances.jsonl").read_text().splitlines()]


def test_real_output_validates_in_jsonl_and_parquet(factory_output):
    jsonl = [parse_instance(where, rec) for where, rec in iter_records(factory_output / "instances.jsonl")]
    parquet = [parse_instance(where, rec) for where, rec in iter_records(factory_output / "instances.parquet")]
    assert len(jsonl) == 2 and parquet == jsonl
    assert [i.to_record() for i in jsonl] == _lines(factory_output)  # the writer wrote exactly the contract
    # both readers give the same from either file
    assert read_long([str(factory_output / "instances.parquet")]) == read_long([str(factory_output)])
    from_parquet, _ = load_factory_qa(factory_output / "instances.parquet")
    assert from_parquet == load_factory_qa(factory_output)[0] and len(from_parquet) == 2
    assert all(e.context and e.context in i.messages[0].content for e, i in zip(from_parquet, jsonl))


def test_id_stays_the_first_field(factory_output):
    """datafactory's output index reads an instance's id from the start of its line."""
    assert next(iter(LongQAInstance.model_fields)) == "id"
    lines = (factory_output / "instances.jsonl").read_bytes().splitlines()
    assert lines and all(leading_id(line, id_prefixes("id")) == json.loads(line)["id"] for line in lines)


def _drop(name):
    return lambda r: {k: v for k, v in r.items() if k != name}


MALFORMED = [
    (_drop("question"), "field 'question': Field required"),
    (lambda r: {**r, "messages": [r["messages"][0], {"role": "assistant", "content": 5}]}, "field 'messages.1.content'"),
    (lambda r: {**r, "messages": r["messages"][:1]}, "need a user and an assistant turn"),
    (lambda r: {**r, "truncated": "yes"}, "field 'truncated': Input should be a valid boolean"),
    (lambda r: {**r, "answer_type": "long"}, "field 'answer_type'"),
    (lambda r: {**r, "kept_char_span": [9, 2]}, "kept_char_span"),
    (lambda r: {**r, "kept_token_span": [1]}, "field 'kept_token_span'"),
    (lambda r: {**r, "chunk_index": "3"}, "field 'chunk_index': Input should be a valid integer"),
    (lambda r: {**r, "id": ""}, "field 'id'"),
    (lambda r: [r["id"]], "expected an object, got list"),
]


@pytest.mark.parametrize("damage,message", MALFORMED)
@pytest.mark.parametrize("reader,error", [(read_long, DataError), (load_factory_qa, TaskDataError)])
def test_a_malformed_record_names_file_line_and_field(factory_output, tmp_path, damage, message, reader, error):
    good, other = _lines(factory_output)
    path = tmp_path / "instances.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(damage(other)) + "\n")
    before = path.read_bytes()
    arg = [str(tmp_path)] if reader is read_long else tmp_path
    with pytest.raises(error, match=f"instances.jsonl:2: not a long QA instance: .*{message}"):
        reader(arg)
    assert path.read_bytes() == before  # refused, never repaired or skipped


@pytest.mark.parametrize("field", READER_FIELDS)
def test_the_fields_readers_need_stay_required(factory_output, tmp_path, field):
    """Dropping a reader's field from the contract (or making it optional) fails here; a record without it is
    refused by both readers, naming the field."""
    assert LongQAInstance.model_fields[field].is_required()
    (tmp_path / "instances.jsonl").write_text(json.dumps(_drop(field)(_lines(factory_output)[0])) + "\n")
    with pytest.raises(DataError, match=f"field '{field}': Field required"):
        read_long([str(tmp_path)])
    with pytest.raises(TaskDataError, match=f"field '{field}': Field required"):
        load_factory_qa(tmp_path)


def test_parquet_rows_are_named_by_index(factory_output, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _lines(factory_output)
    rows[1]["answer"] = ""
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "instances.parquet")
    with pytest.raises(DataError, match=r"instances.parquet\[1\]: not a long QA instance: field 'answer'"):
        read_long([str(tmp_path / "instances.parquet")])


def test_docs_are_generated_from_the_models():
    docs = (REPO / "docs" / "instances.md").read_text()
    assert contract_table() in docs, "docs/instances.md is stale: paste `python3 -m longscale.common.instances`"
    assert qa_contract_table() in docs, "docs/instances.md is stale: paste `python3 -m longscale.common.instances`"


# ---- QA pairs (qa.jsonl, qa.parquet) ------------------------------------------------------------------------

def _qa_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "qa.jsonl").read_text().splitlines()]


def test_real_qa_pairs_follow_the_contract_in_jsonl_and_parquet(factory_output):
    pairs = list(iter_qa_pairs(factory_output))
    assert len(pairs) == 2 and all(p.accepted and p.reject_reason is None for p in pairs)
    assert [p.to_record() for p in pairs] == _qa_lines(factory_output)  # the writer wrote exactly the contract
    assert list(iter_qa_pairs(factory_output / "qa.parquet")) == pairs
    assert next(iter(QAPair.model_fields)) == "id"
    assert {p.id for p in pairs} == {i.id for i in map(LongQAInstance.model_validate, _lines(factory_output))}


QA_OFF_CONTRACT = [
    (lambda r: {**r, "reject_reason": "no_answer"}, "an accepted pair has no reject_reason"),
    (lambda r: {**r, "accepted": False}, "a pair that is not accepted needs a reject_reason"),
    (lambda r: {**r, "answer": None}, "an accepted pair needs a question and an answer"),
    (lambda r: {**r, "accepted": False, "reject_reason": "bored"}, "field 'reject_reason'"),
    (_drop("chunk_tokens"), "field 'chunk_tokens': Field required"),
    (lambda r: {**r, "critique": {"verdict": "maybe", "reason": None, "raw": None}}, "field 'critique.verdict'"),
    (lambda r: {**r, "extraction_notes": ("repaired",)}, "field 'extraction_notes'"),
    (lambda r: {**r, "chunk_char_span": [9, 2]}, "chunk_char_span"),
    (lambda r: {**r, "pairs_found": -1}, "field 'pairs_found'"),
    (lambda r: {**r, "surprise": 1}, "fields not in the QA pair contract: surprise"),
]


@pytest.mark.parametrize("damage,message", QA_OFF_CONTRACT)
def test_the_writer_refuses_a_qa_record_off_the_contract(tmp_path, damage, message):
    writer = OutputWriter(tmp_path)
    with pytest.raises(QARecordError, match=f"QA pair 'q2': .*{message}"):
        writer.append([qa_record("q1"), damage(qa_record("q2"))], [])
    assert not (tmp_path / "qa.jsonl").exists() and writer.done_ids() == frozenset()  # nothing appended


def test_a_damaged_qa_line_is_named_by_file_and_line(factory_output, tmp_path):
    first, second = _qa_lines(factory_output)
    (tmp_path / "qa.jsonl").write_text(json.dumps(first) + "\n" + json.dumps({**second, "accepted": "yes"}) + "\n")
    with pytest.raises(QARecordError, match=r"qa.jsonl:2: not a QA pair record: field 'accepted': Input should "
                                            r"be a valid boolean"):
        list(iter_qa_pairs(tmp_path))


def test_qa_readers_keep_the_last_record_per_id_and_name_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    failed = qa_record("q1", reject_reason="engine_error", engine_error="http_503: injected", raw=None)
    retried, other = qa_record("q1"), qa_record("q2")
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (failed, other, retried)))
    assert [p.to_record() for p in iter_qa_pairs(tmp_path / "qa.jsonl")] == [other, retried]
    pq.write_table(pa.Table.from_pylist([other, {**retried, "chunk_index": -1}]), tmp_path / "qa.parquet")
    with pytest.raises(QARecordError, match=r"qa.parquet\[1\]: not a QA pair record: field 'chunk_index'"):
        list(iter_qa_pairs(tmp_path / "qa.parquet"))


def _reason_strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _reason_strings(node.body) | _reason_strings(node.orelse)
    return set()


def test_every_reject_reason_the_code_sets_is_in_the_contract():
    """The reasons extraction.py, critique.py and pipeline.py can set (read off their source: `reason = "..."`, an
    Extraction's third argument, `reject_reason="..."`, `record["reject_reason"] = "..."`) are exactly the
    contract's: a new reason without its contract entry fails here, not at a user's write."""
    found: set[str] = set()
    for module in ("extraction.py", "critique.py", "pipeline.py"):
        for node in ast.walk(ast.parse((REPO / "datafactory" / module).read_text())):
            if isinstance(node, ast.keyword) and node.arg == "reject_reason":
                found |= _reason_strings(node.value)
            elif isinstance(node, ast.Assign) and any(
                    (isinstance(t, ast.Name) and t.id == "reason")
                    or (isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant)
                        and t.slice.value == "reject_reason") for t in node.targets):
                found |= _reason_strings(node.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Extraction"
                  and len(node.args) >= 3):
                found |= _reason_strings(node.args[2])
    assert found == set(REJECT_REASONS), (sorted(found - set(REJECT_REASONS)), sorted(set(REJECT_REASONS) - found))
