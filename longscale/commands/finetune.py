"""`longscale finetune`: flags from FinetuneConfig (defaults < --config YAML < flags)."""
from __future__ import annotations

import argparse
import json

from finetune.config import FinetuneConfig
from longscale.common.configcli import add_model_flags, resolve_config


def _run(args: argparse.Namespace) -> int:
    from finetune.run import run_finetune

    config = resolve_config(FinetuneConfig, args, yaml_path=args.config)
    result = run_finetune(config)
    print(json.dumps(result["outputs"], indent=2))
    return 0


def register(sub) -> None:
    parser = sub.add_parser("finetune", help="assemble FT-Short + long data (packing, padding, loss masks) and finetune",
                            description=__doc__)
    parser.add_argument("--config", help="YAML file with FinetuneConfig settings (flags override it)")
    add_model_flags(parser, FinetuneConfig)
    parser.set_defaults(func=_run)
