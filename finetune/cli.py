"""`longscale finetune`: flags from FinetuneConfig (defaults < --config YAML < flags)."""
from __future__ import annotations

import argparse
import json

from longscale.configcli import add_model_flags, resolve_config
from finetune.config import FinetuneConfig


def _run(args: argparse.Namespace) -> int:
    from finetune.run import run_finetune

    config = resolve_config(FinetuneConfig, args, yaml_path=args.config)
    result = run_finetune(config)
    print(json.dumps(result["outputs"], indent=2))
    return 0


class _AppendOverUnset(argparse._AppendAction):
    """Repeatable list flag whose "not given" default is a sentinel object (configcli's), not a list.

    Work-around until longscale.configcli does this itself: argparse's append action copies the default
    and calls .append on it, which fails for the sentinel.
    """

    def __call__(self, parser, namespace, values, option_string=None):
        if not isinstance(getattr(namespace, self.dest, None), list):
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def register(sub) -> None:
    parser = sub.add_parser("finetune", help="assemble FT-Short + long data (packing, padding, loss masks) and finetune",
                            description=__doc__)
    parser.add_argument("--config", help="YAML file with FinetuneConfig settings (flags override it)")
    add_model_flags(parser, FinetuneConfig)
    for action in parser._actions:
        if type(action) is argparse._AppendAction:
            action.__class__ = _AppendOverUnset
    parser.set_defaults(func=_run)
