"""Data assembly: sources -> samples -> loss masks -> mix -> rows -> `datasets.Dataset` + stats.

Pure CPU work with a progress bar per phase. Nothing is truncated: short and pretrain samples longer than a
packed row are split (and counted); long samples over `max_length` fail the run naming the sample, or are
dropped and counted with `drop_overlong`.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from finetune.config import FinetuneConfig
from finetune.masks import apply_loss_masks
from finetune.mixing import mix
from finetune.packing import long_rows, pack_best_fit_decreasing
from finetune.sources import DataError, read_long, read_pretrain, read_short
from finetune.tokenization import Sample, split_sample, tokenize_record
from longscale.common.tokenizers import load_tokenizer as common_load_tokenizer

log = logging.getLogger(__name__)
KINDS = ("short", "long", "pretrain")


def load_tokenizer(model: str):
    """The model's tokenizer, padding with EOS where it has no pad token (the row collator pads)."""
    return common_load_tokenizer(model, flag="--model", pad_with_eos=True, trust_remote_code=True)


def _tokenize_all(tokenizer, records: list[dict[str, Any]]) -> list[Sample]:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.speed} rec/s"),
               TimeRemainingColumn()]
    out = []
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("tokenizing", total=len(records))
        for record in records:
            out.append(tokenize_record(tokenizer, record))
            progress.advance(task)
    return out


def assemble_rows(config: FinetuneConfig, tokenizer) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows (shuffled with the seed) and the stats of how they were made."""
    records = read_short(config.short_data) + read_long(config.long_data) + read_pretrain(config.pretrain_data)
    samples = _tokenize_all(tokenizer, records)
    by_kind: dict[str, list[Sample]] = {k: [s for s in samples if s.kind == k] for k in KINDS}
    stats: dict[str, Any] = {"samples_read": {k: len(v) for k, v in by_kind.items()}}

    overlong = [s.id for s in by_kind["long"] if len(s) > config.max_length]
    if overlong and not config.drop_overlong:
        raise DataError(f"{len(overlong)} long sample(s) exceed --max-length {config.max_length}: "
                        f"{', '.join(overlong[:5])}{' ...' if len(overlong) > 5 else ''} "
                        "(raise --max-length or pass --drop-overlong)")
    by_kind["long"] = [s for s in by_kind["long"] if len(s) <= config.max_length]
    stats["overlong_dropped"], stats["overlong_ids"] = len(overlong), overlong[:50]

    split_ids = [s.id for s in by_kind["short"] if len(s) > config.pack_length]
    if split_ids:
        log.warning("%d short sample(s) are longer than --pack-length %d and were split: %s", len(split_ids),
                    config.pack_length, ", ".join(split_ids[:5]))
    stats["short_split"], stats["short_split_ids"] = len(split_ids), split_ids[:50]
    for kind in ("short", "pretrain"):
        by_kind[kind] = [piece for s in by_kind[kind] for piece in split_sample(s, config.pack_length)]

    by_kind, dropped = mix(by_kind, long_ratio=config.long_ratio, pretrain_ratio=config.pretrain_ratio,
                           by=config.mix_by, seed=config.seed)
    stats["mix_left_out"] = dropped
    for kind_samples in by_kind.values():
        apply_loss_masks(kind_samples, loss_on_long_input=config.loss_on_long_input,
                         loss_on_short_input=config.loss_on_short_input)

    pad_id = tokenizer.pad_token_id
    rows = (pack_best_fit_decreasing(by_kind.get("short", []), config.pack_length, pad_id)
            + pack_best_fit_decreasing(by_kind.get("pretrain", []), config.pack_length, pad_id)
            + long_rows(by_kind.get("long", []), pad_to=config.pad_to, max_length=config.max_length,
                        pad_multiple=config.pad_multiple, pad_id=pad_id))
    random.Random(config.seed).shuffle(rows)
    stats.update(row_stats(rows, config.pack_length, config.per_device_rows))
    stats["samples_used"] = {k: len(by_kind.get(k, [])) for k in KINDS}
    stats["pack_attention"] = config.pack_attention
    return rows, stats


def row_stats(rows: list[dict[str, Any]], pack_length: int, per_device_rows: int = 1) -> dict[str, Any]:
    total = sum(r["length"] for r in rows)
    pad = sum(r["num_pad"] for r in rows)
    loss = sum(sum(1 for x in r["labels"] if x != -100) for r in rows)
    packed = [r for r in rows if r["kind"] != "long"]
    packed_real = sum(r["length"] - r["num_pad"] for r in packed)
    # batches of `per_device_rows` grouped by length (what the length-grouped sampler does) pad to their longest row
    lengths = sorted(r["length"] for r in rows)
    groups = [lengths[i:i + per_device_rows] for i in range(0, len(lengths), per_device_rows)]
    batch_total = sum(max(g) * len(g) for g in groups)
    return {
        "rows": len(rows),
        "rows_by_kind": {k: sum(1 for r in rows if r["kind"] == k) for k in KINDS},
        "tokens": total,
        "real_tokens": total - pad,
        "loss_tokens": loss,
        "pad_tokens": pad,
        "pad_fraction": round(pad / total, 6) if total else 0.0,
        "batch_pad_fraction": round((batch_total - (total - pad)) / batch_total, 6) if batch_total else 0.0,
        "packing_efficiency": round(packed_real / (len(packed) * pack_length), 6) if packed else None,
    }


def to_dataset(rows: list[dict[str, Any]]):
    import datasets

    columns = ["input_ids", "labels", "seq_lengths", "kind", "sample_ids", "length", "num_pad"]
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns})


def save_prepared(rows: list[dict[str, Any]], stats: dict[str, Any], output: Path, write: bool = True) -> dict[str, str]:
    """Write OUTPUT/dataset and dataset_stats.json (with `write=False` only return their paths)."""
    paths = {"dataset": str(output / "dataset"), "dataset_stats": str(output / "dataset_stats.json")}
    if write:
        output.mkdir(parents=True, exist_ok=True)
        to_dataset(rows).save_to_disk(paths["dataset"])
        Path(paths["dataset_stats"]).write_text(json.dumps(stats, indent=2))
    return paths


def print_stats(stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="finetune dataset")
    table.add_column("stat")
    table.add_column("value", justify="right")
    for key in ("rows", "rows_by_kind", "samples_used", "tokens", "loss_tokens", "pad_fraction", "batch_pad_fraction",
                "packing_efficiency", "short_split", "overlong_dropped", "mix_left_out"):
        table.add_row(key, str(stats.get(key)))
    Console(stderr=True).print(table)
