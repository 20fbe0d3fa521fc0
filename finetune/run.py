"""`run_finetune(config)`: assemble the data, then train (unless `prepare_only`). One entry for CLI, demo, API."""
from __future__ import annotations

import json
import os
from typing import Any

from finetune.assemble import assemble_rows, load_tokenizer, print_stats, save_prepared, to_dataset
from finetune.config import FinetuneConfig, FinetuneOptimizer
from finetune.sources import DataError
from longscale.common.config import CheckpointingConfig
from longscale.common.models import check_model_path
from longscale.common.outputs import check_output_folder, recipe_differences, refuse_changed_recipe

CONFIG_FILE = "finetune_config.json"
RUN_MARKERS = (CONFIG_FILE, "dataset_stats.json", "dataset", "checkpoints", "final")
# settings that change how the run executes or how long, not what it trains on: a resume may change them
RUN_KNOBS = {"output", "resume", "overwrite", "prepare_only", "max_steps", "save_steps", "save_total_limit",
             "logging_steps", "torch_compile", "attn_implementation", "gradient_checkpointing", "step_in_backward",
             "offload_optimizer_state"}


def is_main_process() -> bool:
    """Under torchrun / accelerate launch every rank assembles the same rows; only RANK 0 writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def run_finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Returns {"stats": ..., "outputs": {...}} plus the training summary when it trained."""
    check_model_path(config.model)
    output = check_output_folder(config.output, resume=config.checkpointing.resume, overwrite=config.overwrite,
                                 markers=RUN_MARKERS, what="finetuning run")
    if config.checkpointing.resume and (output / CONFIG_FILE).is_file():
        saved = json.loads((output / CONFIG_FILE).read_text())
        refuse_changed_recipe(recipe_differences(saved, config.model_dump(mode="json"), RUN_KNOBS), output)
    main = is_main_process()
    tokenizer = load_tokenizer(config.model)
    rows, stats = assemble_rows(config, tokenizer)
    outputs = save_prepared(rows, stats, output, write=main)
    if main:
        print_stats(stats)
        (output / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
    result: dict[str, Any] = {"stats": stats, "outputs": outputs}
    if config.prepare_only:
        return result
    if not rows:
        raise DataError(f"nothing to train on: no rows were assembled (samples read: {stats['samples_read']}, "
                        f"long samples over --max-length dropped: {stats['overlong_dropped']})")
    from finetune.trainer import train

    dataset = to_dataset(rows)
    summary = train(config, dataset, tokenizer)
    result["training"] = summary
    result["outputs"].update({k: summary[k] for k in ("final_model", "loss_curve", "train_log") if summary.get(k)})
    if main:
        (output / "finetune_result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def demo_config(model: str, long_data: list[str], output: str, short_data: list[str] | None = None,
                steps: int = 2, max_length: int = 4096) -> FinetuneConfig:
    """A few LoRA steps for `longscale demo` on 2 CPU cores (~10 s per 1k-token step for SmolLM2-135M).

    Long instances over `max_length` are dropped and counted (a CPU step at 8k tokens takes minutes).
    """
    return FinetuneConfig(model=model, output=output, long_data=long_data, short_data=short_data or [],
                          pack_length=1024, max_length=max_length, drop_overlong=True, batch_tokens=1024, max_steps=steps,
                          lora_r=8, lora_alpha=16, optimizer=FinetuneOptimizer(learning_rate=1e-4, warmup_ratio=0.0),
                          gradient_checkpointing=False, checkpointing=CheckpointingConfig(save_steps=10**6),
                          logging_steps=1,
                          overwrite=True)  # the demo's few steps are redone when the demo runs again
