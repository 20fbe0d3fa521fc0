"""`longscale generate`: documents in, QA pairs and long instances out (flags = GenerationConfig fields)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from datafactory.config import GenerationConfig
from longscale.common.configcli import ConfigError, add_model_flags, read_yaml, resolve_config
from longscale.common.models import check_model_path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("generate", help="self-instruct long-context QA data from long documents",
                            description="Chunk long documents, ask a chat model for question-answer pairs (the "
                            "paper's Figure 9 prompts), verify them by self-critique, and build long training "
                            "instances (Figure 10). Running again into the same --output resumes.")
    parser.add_argument("--input", nargs="+", metavar="PATH",
                        help="documents: .txt/.md files or directories of them, .jsonl, .parquet, or a "
                             "datasets save_to_disk directory (or `input:` in --config)")
    parser.add_argument("--output", metavar="DIR", help="output directory, resumed if it exists (or `output:` "
                        "in --config)")
    parser.add_argument("--config", metavar="FILE.yaml", help="settings from YAML; flags override it")
    parser.add_argument("--broker", metavar="URL", help="submit to Celery workers through this broker "
                        "(redis://...) instead of generating in this process")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    add_model_flags(parser, GenerationConfig, group_title="generation settings")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    config = resolve_config(GenerationConfig, args, args.config, command_keys=("input", "output"))
    paths = read_yaml(args.config) if args.config else {}
    inputs = args.input or paths.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs
    output = args.output or paths.get("output")
    if not inputs or not output:
        raise ConfigError("generate needs --input PATH... and --output DIR (flags, or `input:` / `output:` in --config)")
    return generate([str(p) for p in inputs], config, Path(output), broker=args.broker, progress=not args.no_progress)


def generate(inputs: list[str], config: GenerationConfig, output: Path, broker: str | None = None,
             progress: bool = True) -> int:
    """Run (or submit) a generation and print the summary; the library's errors reach main's one mapping."""
    from itertools import chain

    from datafactory.documents import iter_documents
    from datafactory.pipeline import run_generation

    if broker:
        from worker.submit import submit_generation

        manifest = submit_generation([str(p) for p in inputs], config, str(output), broker, progress=progress)
        if isinstance(manifest, dict) and "counts" in manifest:
            print_summary(manifest, output)
        else:
            print(f"submitted to {broker}; results will appear in {output}")
        return 0
    if config.engine != "openai":  # a served model's name is no path; a local one is checked before any lookup
        check_model_path(config.model)
    documents = iter_documents(inputs, config)  # streamed: a corpus is never all in memory
    first = next(documents, None)
    if first is None:
        raise ConfigError(f"no documents found in {', '.join(map(str, inputs))}")
    manifest = run_generation(chain([first], documents), config, output, progress=progress)
    print_summary(manifest, output)
    counts, first_error = manifest["counts"], manifest["this_run"]["first_engine_error"]
    if manifest["status"] in ("failed", "partial"):
        every = "every request" if manifest["status"] == "failed" else f"{counts['engine_errors']} of {counts['qa']} requests"
        print(f"longscale: the engine failed on {every}" + (f" (first: {first_error})" if first_error else "") +
              "; what was written is kept, and running the same command again retries them", file=sys.stderr)
        return 1
    return 0


def print_summary(manifest: dict[str, Any], output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    counts, run = manifest["counts"], manifest.get("this_run") or {}
    table = Table(title=f"generation {manifest.get('status', '')}: {output}")
    table.add_column("what")
    table.add_column("value", justify="right")
    rate = counts["acceptance_rate"]
    rows = [
        ("documents (this run / too short / already done)",
         f"{run.get('processed', 0)} / {run.get('too_short', 0)} / {run.get('already_done', 0)}"),
        ("QA pairs in the directory", str(counts["qa"])),
        ("accepted", f"{counts['accepted']} ({rate:.0%})" if rate is not None else "0"),
        ("long instances", f"{counts['instances']} ({counts['truncated_instances']} truncated to fit)"),
        ("new this run", f"{run.get('qa_new', 0)} QA, {run.get('accepted_new', 0)} accepted"),
        ("requests, requests/s", f"{run.get('requests', 0)}, {run.get('requests_per_s', 0):.2f}"),
        ("failed on the engine (a re-run retries them)", str(counts.get("engine_errors", 0))),
        ("time", f"{(manifest.get('timings') or {}).get('generation_s', 0):.1f} s"),
    ]
    rows += [(f"rejected: {reason}", str(n)) for reason, n in (manifest.get("rejection_reasons") or {}).items()]
    for row in rows:
        table.add_row(*row)
    console = Console(file=sys.stdout)
    console.print(table)
    console.print(f"files: {output}/qa.jsonl, instances.jsonl, qa.parquet, instances.parquet, manifest.json")
