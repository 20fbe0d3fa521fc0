"""`longscale pretrain [apply-rope]` and `longscale probe <name>`: thin wrappers over the package."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from longscale.common.configcli import ConfigError, add_model_flags, resolve_config
from longscale.common.models import check_model_path, model_label
from longscale.common.outputs import check_output_folder

PROBES = ("first-sentence", "passkey", "loss-by-position", "context-scaling", "rope-decay")


def register(sub: argparse._SubParsersAction) -> None:
    from pretrain.config import ApplyRopeConfig, PretrainConfig
    from pretrain.probes.config import ProbeConfig

    train = sub.add_parser("pretrain", help="continual pretraining with a RoPE variant (and `apply-rope`)",
                           description="Continue pretraining a Llama-architecture checkpoint at a longer length. "
                                       "`longscale pretrain apply-rope ...` only converts the RoPE variant.")
    train.add_argument("--config", help="YAML file with the same settings as the flags")
    add_model_flags(train, PretrainConfig)
    train.set_defaults(func=_run_pretrain)
    actions = train.add_subparsers(dest="pretrain_action", metavar="ACTION")
    apply = actions.add_parser("apply-rope", help="write a checkpoint converted to a RoPE variant, no training")
    apply.add_argument("--config", help="YAML file")
    add_model_flags(apply, ApplyRopeConfig)
    apply.set_defaults(func=_run_apply)

    probe = sub.add_parser("probe", help="long-context probes (JSON + PNG)")
    names = probe.add_subparsers(dest="probe_name", metavar="PROBE")
    for name in PROBES:
        p = names.add_parser(name, help=f"{name} probe")
        p.add_argument("--config", help="YAML file")
        add_model_flags(p, ProbeConfig)
        p.set_defaults(func=_run_probe)
    probe.set_defaults(func=lambda a: probe.print_help() or 2)


def _run_apply(args) -> int:
    from pretrain.apply import apply_rope_variant
    from pretrain.config import ApplyRopeConfig

    cfg = resolve_config(ApplyRopeConfig, args, args.config)
    check_model_path(cfg.model)
    check_output_folder(cfg.output, overwrite=cfg.overwrite, markers=("config.json",), what="converted model")
    changes = apply_rope_variant(cfg.model, cfg.variant, cfg.output, base=cfg.rope.rope_base, seq_len=cfg.seq_len)
    print(json.dumps({"output": cfg.output, "changes": changes}, indent=2))
    return 0


def _run_pretrain(args) -> int:
    from pretrain.config import PretrainConfig
    from pretrain.trainer import pretrain

    cfg = resolve_config(PretrainConfig, args, args.config)
    check_model_path(cfg.model)
    if not Path(cfg.model).is_dir():
        raise ConfigError(f"--model {cfg.model}: no such model folder")
    summary = pretrain(cfg)
    print(json.dumps(summary, indent=2))
    return 0


def _run_probe(args) -> int:
    from pretrain.probes.config import ProbeConfig

    cfg = resolve_config(ProbeConfig, args, args.config)
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file, not a folder: choose a folder path")
    check_model_path(cfg.model)
    name = args.probe_name
    if name == "rope-decay":
        from pretrain.probes.rope_decay import rope_decay, rope_decay_for_model

        kw: dict[str, Any] = dict(abf_base=cfg.rope.rope_base, pi_factor=cfg.pi_factor, max_distance=max(cfg.lengths), output=out)
        result = rope_decay_for_model(cfg.model, **kw) if cfg.model else rope_decay(**kw)
        print(json.dumps(result["mean_abs_score_last_quarter"], indent=2))
        return 0
    if not cfg.model or not Path(cfg.model).is_dir():
        raise ConfigError(f"--model {cfg.model}: no such model folder")
    if name != "passkey" and not cfg.texts:
        raise ConfigError(f"probe {name} needs --texts (held-out evaluation text)")
    from pretrain.probes.model import HFModel
    from pretrain.probes.results import read_texts

    model = HFModel(cfg.model, device=cfg.device)
    label = model_label(cfg.model)
    texts = read_texts(cfg.texts) if cfg.texts else []
    if name == "first-sentence":
        from pretrain.probes.first_sentence import run_first_sentence

        res = run_first_sentence(model.answer, model.tokenizer, texts, cfg.lengths, samples=cfg.samples,
                                 seed=cfg.seed, mode=cfg.prompt, output=out, label=label)
        summary = res["accuracy"]
    elif name == "passkey":
        from pretrain.probes.passkey import run_passkey

        summary = run_passkey(model.answer, model.tokenizer, cfg.lengths, samples=cfg.samples, seed=cfg.seed,
                              output=out, label=label)["accuracy"]
    elif name == "loss-by-position":
        from pretrain.probes.losses import loss_by_position, token_windows

        windows = token_windows(texts, model.tokenizer, max(cfg.lengths), cfg.windows, cfg.seed)
        trained = model.model.config.to_dict().get("original_max_position_embeddings")
        res = loss_by_position(model.token_losses, windows, bin_size=cfg.bin_size, output=out, label=label,
                               trained_length=trained)
        summary = {"mean_loss": res["mean_loss"], "bins": len(res["bins"])}
    else:
        from pretrain.probes.losses import context_scaling

        res = context_scaling(model.token_losses, texts, model.tokenizer, cfg.lengths, windows=cfg.windows,
                              seed=cfg.seed, output=out, label=label)
        summary = {"loss": res["loss"], "fit": res["fit"]}
    print(json.dumps(summary, indent=2))
    return 0
