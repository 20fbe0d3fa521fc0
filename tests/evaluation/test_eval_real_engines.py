"""`longscale eval` with real engines on the embedded model: the transformers engine in process, and the openai
engine against a real `transformers serve` on 127.0.0.1 (the path to `vllm serve`). Greedy decoding, so both
must give the same answers. The model's scores are not asserted (a 135M model), only that every prompt was
answered, fitted its length and was scored."""
import json

import pytest

from datafactory.testing import TransformersServe
from longscale.commands.main import main as longscale_main
from tests.evaluation.test_eval_ruler import squad_file


def run_cli(tmp_path, name, data, extra):
    out = tmp_path / name
    argv = ["eval", "--task", "ruler-squad", "--data", str(data), "--lengths", "512", "--num-samples", "2",
            "--max-new-tokens", "12", "--output", str(out), "--no-progress", *extra]
    assert longscale_main(argv) == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    result = json.loads((out / "results.json").read_text())
    return records, result


@pytest.mark.slow
def test_transformers_and_served_engines_agree(tmp_path, embedded_model_dir, capsys):
    data = squad_file(tmp_path)
    local, local_result = run_cli(tmp_path, "local", data, ["--model", str(embedded_model_dir)])
    with TransformersServe(embedded_model_dir, env={"OMP_NUM_THREADS": "1"}) as served:
        remote, remote_result = run_cli(tmp_path, "served", data, ["--engine", "openai", "--base-url", served.base_url,
                                                                   "--tokenizer", str(embedded_model_dir)])
    assert "ruler-squad" in capsys.readouterr().out
    for records, result in ((local, local_result), (remote, remote_result)):
        assert len(records) == 2 and result["by_length"]["512"]["engine_errors"] == 0
        assert all(r["error"] is None and r["prediction"].strip() and r["prompt_tokens"] <= 500 for r in records)
        per_record = [r["scores"]["substring_match"] for r in records]  # ruler-squad's metric, record by record
        assert result["by_length"]["512"]["score"] == pytest.approx(sum(per_record) / len(per_record))
    assert [r["prediction"] for r in local] == [r["prediction"] for r in remote]
