"""`run_finetune(config)`: assemble the data, then train (unless `prepare_only`). One entry for CLI, demo, API."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from finetune.assemble import assemble_rows, load_tokenizer, print_stats, save_prepared, to_dataset
from finetune.config import FinetuneConfig


def run_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Returns {"stats": ..., "outputs": {...}} plus the training summary when it trained."""
    output = Path(config.output)
    tokenizer = load_tokenizer(config.model)
    rows, stats = assemble_rows(config, tokenizer)
    print_stats(stats)
    outputs = save_prepared(rows, stats, output)
    (output / "finetune_config.json").write_text(config.model_dump_json(indent=2))
    result: dict[str, Any] = {"stats": stats, "outputs": outputs}
    if config.prepare_only:
        return result
    from finetune.trainer import train

    dataset = to_dataset(rows)
    summary = train(config, dataset, tokenizer)
    result["training"] = summary
    result["outputs"].update({k: summary[k] for k in ("final_model", "loss_curve", "train_log") if summary.get(k)})
    (output / "finetune_result.json").write_text(json.dumps(result, indent=2, default=str))
    return result
