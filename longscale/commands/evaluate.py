"""`longscale eval`: long-context QA evaluation through the datafactory engines (see docs/evaluation.md)."""
from __future__ import annotations

import argparse
import sys

from longscale.common.configcli import add_model_flags, resolve_config
from longscale.common.models import check_model_path


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
    if config.engine != "openai":  # a served model's name is no path; a local one is checked before any lookup
        check_model_path(config.model)
    result = run_eval(config, progress=not args.no_progress)
    print(summary_line(result))
    print(f"wrote {config.output}/results.json, results.md, records.jsonl, score_by_length.png")
    cells = result["by_length"].values()
    failed, asked = sum(c["engine_errors"] for c in cells), sum(c["n"] for c in cells)
    if failed:  # a score over failed requests is not a result: say so in the exit code too
        first = next(c["first_error"] for c in cells if c.get("first_error"))
        every = "every request" if failed == asked else f"{failed} of {asked} requests"
        print(f"longscale: the engine failed on {every} (scored 0; first: {first})", file=sys.stderr)
        return 1
    return 0
