"""`longscale model fetch`: fetch and convert the embedded model, print its folder (for scripts and GPU runs)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="the embedded default model (SmolLM2-135M-Instruct)")
    actions = parser.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="download and convert it once; print the HF folder's path")
    fetch.set_defaults(func=_fetch)


def _fetch(_args: argparse.Namespace) -> int:
    from datafactory.embedded import ensure_embedded_model

    print(ensure_embedded_model())
    return 0
