"""The `longscale` entry point: it only composes the subcommands that each package owns.

Each package exposes `register(subparsers)` in its `cli` module, which adds its subcommand(s) and sets
`func` on the parsed namespace. Packages whose optional dependencies are missing still show up, with a
message that says which extra to install.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from longscale import __version__
from longscale.configcli import ConfigError

# (module, extra needed) in help order
SUBCOMMAND_MODULES = [
    ("datafactory.cli", None),
    ("worker.cli", "worker"),
    ("api.cli", "api"),
    ("finetune.cli", "train"),
    ("pretrain.cli", None),
    ("pretrain.evaluation.cli", "eval"),
    ("longscale.demo", None),
    ("longscale.model_cli", None),
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
            if exc.name and exc.name.split(".")[0] == module_name.split(".")[0]:
                continue  # that package has no CLI (yet)
            hint = f"pip install 'longscale[{extra}]'" if extra else "reinstall longscale"
            missing = sub.add_parser(module_name.split(".")[0], help=f"(unavailable: {exc.name} missing; {hint})")
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
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"longscale: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longscale: interrupted; what was already written is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
