"""The `longscale` entry point: it composes the subcommands of longscale/commands/ and maps errors to exit codes.

Each module of longscale/commands/ exposes `register(subparsers)`, which adds its subcommand(s) and sets
`func` on the parsed namespace. Commands whose optional dependencies are missing still show up, with a
message that says which extra to install. This is the ONE place where errors become exit codes: every
library raises its own subclass of `LongscaleError` (exit 2), Ctrl-C exits 130; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from longscale import __version__
from longscale.common.errors import LongscaleError
from longscale.common.progress import library_bars_off_a_terminal

LIBRARY_PACKAGES = {"datafactory", "worker", "api", "finetune", "pretrain", "evaluation"}
# (module, extra needed) in help order
SUBCOMMAND_MODULES = [
    ("longscale.commands.generate", None),
    ("longscale.commands.worker", "worker"),
    ("longscale.commands.api", "api"),
    ("longscale.commands.finetune", "train"),
    ("longscale.commands.pretrain", None),
    ("longscale.commands.evaluate", "eval"),
    ("longscale.commands.demo", None),
    ("longscale.commands.model", None),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longscale", description="Long-context data factory, finetuner and continual pretrainer (Llama 2 Long recipe).")
    parser.add_argument("--version", action="version", version=f"longscale {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, extra in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or (exc.name or "").split(".")[0] in LIBRARY_PACKAGES:
                continue  # that package is not shipped here (the Docker image has no trainers)
            hint = f"pip install 'longscale[{extra}]'" if extra else "reinstall longscale"
            missing = sub.add_parser(module_name.rsplit(".", 1)[1], help=f"(unavailable: {exc.name} missing; {hint})")
            missing.set_defaults(func=lambda _a, e=exc, h=hint: sys.exit(f"longscale: {e}. Install it: {h}"))
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with library_bars_off_a_terminal():
            return int(args.func(args) or 0)
    except LongscaleError as exc:
        print(f"longscale: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longscale: interrupted; what was already written is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
