"""`longscale eval`: long-context QA evaluation through the datafactory engines (see docs/evaluation.md)."""
from __future__ import annotations

import argparse

from longscale.common.configcli import add_model_flags, resolve_config


def register(sub: argparse._SubParsersAction) -> None:
    from evaluation.config import EvalConfig

    parser = sub.add_parser("eval", help="long-context QA evaluation (RULER-style QA, factory QA, SCROLLS-family files)",
                            description="Score a model on a long-context QA task at several context lengths; writes "
                                        "results.json, results.md, records.jsonl and score_by_length.png.")
    parser.add_argument("--config", help="YAML file with the same settings as the flags")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_flags(parser, EvalConfig)
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    from evaluation.config import EvalConfig
    from evaluation.runner import run_eval, summary_line

    config = resolve_config(EvalConfig, args, args.config)
    result = run_eval(config, progress=not args.no_progress)
    print(summary_line(result))
    print(f"wrote {config.output}/results.json, results.md, records.jsonl, score_by_length.png")
    return 0
