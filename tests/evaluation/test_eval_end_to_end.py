"""run_eval end to end on tiny tasks: an oracle engine (a test double that answers from the gold) scores 1.0,
a wrong one 0; outputs (JSON, markdown, records, PNG) are written; engine errors count as 0 and are reported;
the CLI turns bad settings into clear errors."""
import json

import pytest
from transformers import AutoTokenizer

from datafactory.engines import EngineResult
from evaluation.config import EvalConfig
from evaluation.runner import run_eval
from longscale.commands.main import main as longscale_main
from longscale.common.configcli import ConfigError
from tests.evaluation.test_eval_ruler import squad_file
from tests.instance_records import instance_record


class OracleEngine:
    """Test double: finds which known question the prompt asks and answers with its gold (or a fixed wrong
    answer, or an error), so the scoring path is checked without a model."""

    name = "oracle"
    model_name = "oracle"

    def __init__(self, gold: dict[str, str], mode: str = "right", tail: str = ""):
        self.gold, self.mode, self.tail, self.prompts = gold, mode, tail, []

    async def agenerate(self, conversations, params):
        out = []
        for conv in conversations:
            text = conv[-1]["content"]
            self.prompts.append(text)
            if self.mode == "error":
                out.append(EngineResult(text=None, error="http_503: injected"))
                continue
            # the question asked is the last one in the prompt (haystack paragraphs may mention others)
            question = max(self.gold, key=lambda q: text.rfind(q))
            answer = self.gold[question] if self.mode == "right" else "purple elephant"
            out.append(EngineResult(text=answer + self.tail, finish_reason="stop"))
        return out

    def close(self):
        pass


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    return AutoTokenizer.from_pretrained(embedded_model_dir)


def squad_gold(path):
    data = json.loads(path.read_text())
    return {qa["question"]: qa["answers"][0]["text"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]
            if not qa["is_impossible"]}


@pytest.mark.parametrize("mode, expected", [("right", 1.0), ("wrong", 0.0)])
def test_ruler_oracle_scores_one_and_wrong_scores_zero(tmp_path, tokenizer, mode, expected):
    data = squad_file(tmp_path)
    # a chatty answer; F1 reads its first line (the paper's rule, an option), substring match the whole of it
    engine = OracleEngine(squad_gold(data), mode, tail="\nextra words after the answer")
    cfg = EvalConfig(task="ruler-squad", data=str(data), output=str(tmp_path / "out"), lengths="1k,2k", num_samples=4,
                     answer_scope="first_line")
    result = run_eval(cfg, engine=engine, tokenizer=tokenizer, progress=False)
    for length in ("1024", "2048"):
        cell = result["by_length"][length]
        assert cell["n"] == 4 and cell["score"] == expected and cell["scores"]["f1"] == expected
    out = tmp_path / "out"
    assert json.loads((out / "results.json").read_text())["by_length"]["2048"]["score"] == expected
    assert "| ruler-squad | substring_match |" in (out / "results.md").read_text()
    assert "(fed" not in (out / "results.md").read_text()  # RULER fills the haystack to the asked length
    assert (out / "score_by_length.png").stat().st_size > 1000
    assert len((out / "records.jsonl").read_text().splitlines()) == 8
    assert all(len(tokenizer(p)["input_ids"]) < 2048 for p in engine.prompts)


def test_file_task_with_truncation_and_engine_errors(tmp_path, tokenizer):
    rows = [{"article_id": f"a{i}", "title": "T", "article": "Long preamble. " * 400 + f"The key is number {i}.",
             "questions": [{"question": f"What is key {i}?", "options": [f"number {i}", "number 99"], "gold_label": 1}]}
            for i in range(3)]
    data = tmp_path / "quality.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(task="quality", data=str(data), output=str(tmp_path / "q"), lengths=[512, 4096], num_samples=3)
    gold = {f"What is key {i}?": f"Number {i}." for i in range(3)}  # SCROLLS' QuALITY EM: the option's text
    right = run_eval(cfg, engine=OracleEngine(gold), tokenizer=tokenizer, progress=False)
    assert right["metric"] == "exact_match" and all(c["score"] == 1.0 and c["scores"]["accuracy"] == 1.0
                                                    for c in right["by_length"].values())
    records = [json.loads(line) for line in (tmp_path / "q" / "records.jsonl").read_text().splitlines()]
    assert records[0]["context_tokens_dropped"] > 0  # 512 tokens: the article was cut from the left
    failing = run_eval(cfg.model_copy(update={"output": str(tmp_path / "e")}), engine=OracleEngine(gold, "error"),
                       tokenizer=tokenizer, progress=False)
    assert failing["by_length"]["512"] == {"n": 3, "score": 0.0, "scores": {"f1": 0.0, "exact_match": 0.0,
                                                                            "substring_match": 0.0, "accuracy": 0.0},
                                           "engine_errors": 3, "did_not_fit": 0, "first_error": "http_503: injected",
                                           "fed_tokens_mean": 478, "fed_tokens_max": 478}
    assert "(3 err)" in (tmp_path / "e" / "results.md").read_text()


def test_config_errors():
    with pytest.raises(ValueError, match="needs --data"):
        EvalConfig(task="qasper", output="x")
    with pytest.raises(ValueError, match="bad length"):
        EvalConfig(task="qasper", data="d", output="x", lengths="4k,lots")
    with pytest.raises(ValueError, match="needs --base-url"):
        EvalConfig(task="qasper", data="d", output="x", engine="openai", tokenizer="t")


def test_cli_reports_missing_file(tmp_path, capsys):
    code = longscale_main(["eval", "--task", "ruler-squad", "--data", str(tmp_path / "nope.json"),
                           "--output", str(tmp_path / "o"), "--lengths", "1k"])
    assert code == 2
    assert "nope.json: no such file" in capsys.readouterr().err
    assert isinstance(ConfigError("x"), ValueError)


def test_plain_few_shot_prompts_and_factory_task(tmp_path, tokenizer, capsys):
    rows = [{"document": {"id": f"d{i}", "text": f"Chapter one. The hero of book {i} is Hero{i}."},
             "question": {"text": f"Who is the hero of book {i}?"}, "answers": [{"text": f"Hero{i}"}]} for i in range(4)]
    data = tmp_path / "nqa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = {r["question"]["text"]: r["answers"][0]["text"] for r in rows}
    engine = OracleEngine(gold)
    cfg = EvalConfig(task="narrativeqa", data=str(data), output=str(tmp_path / "n"), lengths=[1024],
                     prompt_style="plain", few_shot=1, num_samples=10)
    result = run_eval(cfg, engine=engine, tokenizer=tokenizer, progress=False)
    assert result["by_length"]["1024"]["n"] == 3 and result["by_length"]["1024"]["score"] == 1.0  # the shot is not scored
    assert all(p.startswith("Chapter one. The hero of book 0 is Hero0. Q: Who is the hero of book 0?, A: Hero0\n\n")
               and p.endswith(", A:") for p in engine.prompts)

    instance = instance_record("f1", "b", "Darcy wrote a letter.", "Who wrote the letter?", "Mr. Darcy",
                               user='Read. """ Darcy wrote a letter. """\n\nQuestion: Who wrote the letter?')
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "instances.jsonl").write_text(json.dumps(instance) + "\n")
    cfg = EvalConfig(task="factory-qa", data=str(tmp_path / "gen"), output=str(tmp_path / "f"), lengths=[1024])
    capsys.readouterr()
    result = run_eval(cfg, engine=OracleEngine({"Who wrote the letter?": "Mr Darcy"}), tokenizer=tokenizer,
                      progress=True)
    assert result["metric"] == "f1" and result["by_length"]["1024"]["scores"] == {"f1": 1.0, "exact_match": 1.0,
                                                                                  "substring_match": 0.0}
    # a one-line document cannot fill 1k tokens: the table says what the model was really fed
    fed = result["by_length"]["1024"]["fed_tokens_max"]
    assert fed < 200 and f"1.000 (fed ≤{fed} tokens)" in (tmp_path / "f" / "results.md").read_text()
    # captured stderr is not a terminal: whole progress lines, no bar redrawn with carriage returns
    err = capsys.readouterr().err
    assert err.splitlines() == ["factory-qa SmolLM2-135M-Instruct @1024: 1/1 q"] and "\r" not in err


def test_equal_length_batches():
    from evaluation.runner import equal_length_batches

    items = [(None, [], {"prompt_tokens": n}) for n in (100, 90, 100, 100, 70, 100, 80)]
    batches = equal_length_batches(items, 2)
    assert batches == [[0, 2], [3, 5], [4, 6], [1]]  # same-length batches first, then the rest by length
    assert sorted(i for b in batches for i in b) == list(range(7))


def test_answer_scope_whole_by_default_first_line_on_request():
    from evaluation.prompts import Example
    from evaluation.runner import score

    ex = Example(id="1", context="c", question="q", answers=["Hero0"], metric="f1")
    assert EvalConfig(task="qasper", data="d", output="x").answer_scope == "whole"
    whole = score(ex, "f1", "Hero0\nand more words")
    assert whole["f1"] == pytest.approx(2 * (1 / 4) / (1 / 4 + 1)) and whole["exact_match"] == 0.0
    first = score(ex, "f1", "Hero0\nand more words", answer_scope="first_line")
    assert first["f1"] == 1.0 and first["exact_match"] == 1.0 and first["substring_match"] == 1.0


def test_gold_only_task_through_the_runner_pairs_with_ruler(tmp_path, tokenizer):
    """ruler-squad-gold: the same question ids as ruler-squad, prompts holding only the gold paragraph."""
    data = squad_file(tmp_path)
    gold = squad_gold(data)
    runs = {}
    for task in ("ruler-squad", "ruler-squad-gold"):
        engine = OracleEngine(gold)
        cfg = EvalConfig(task=task, data=str(data), output=str(tmp_path / task), lengths="2k", num_samples=5)
        runs[task] = (run_eval(cfg, engine=engine, tokenizer=tokenizer, progress=False), engine.prompts)
    result, prompts = runs["ruler-squad-gold"]
    assert result["metric"] == "substring_match" and result["by_length"]["2048"]["score"] == 1.0
    records = [json.loads(line) for line in (tmp_path / "ruler-squad-gold" / "records.jsonl").read_text().splitlines()]
    long_records = [json.loads(line) for line in (tmp_path / "ruler-squad" / "records.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [r["id"] for r in long_records]
    assert all(p.count("Document ") == 1 for p in prompts)  # the gold alone
    assert all(r["prompt_tokens"] < 300 < lr["prompt_tokens"] for r, lr in zip(records, long_records))
    assert "(fed ≤" in (tmp_path / "ruler-squad-gold" / "results.md").read_text()  # says the length was not filled
