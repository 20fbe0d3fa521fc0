"""One rank of bench_scaling.py: times the real trainers' steps and reports every rank's figures to rank 0.

    python benchmarks/scaling_worker.py make-model --tokenizer DIR --seq N --out DIR [--small]
    torchrun ... benchmarks/scaling_worker.py pretrain --model DIR --seq N --steps S --warmup W --result FILE
    accelerate launch ... benchmarks/scaling_worker.py finetune --tokenizer DIR --data DIR --seq N ... --result FILE

pretrain: `pretrain.trainer.Pretrainer` (FSDP2 from pretrain.distributed under torchrun) and its own
`train_step`, one sequence per GPU per step; its run() is not called, so no multi-GB checkpoint is written.
finetune: bench_finetune.measure (the `longscale finetune` trainer: assemble_rows -> build_trainer -> TRL
SFTTrainer.train, accelerate's FSDP2 under accelerate launch), one row per GPU per step. Each rank times its
own steps; rank 0 writes all ranks' figures (tokens/s, peak memory) to --result as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_finetune, bench_pretrain

import bench_finetune  # noqa: E402  (puts the repository on sys.path)
from bench_pretrain import PEAK, flops_per_seq  # noqa: E402

CUDA = torch.cuda.is_available()


def is_fsdp(module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def peak_gb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None


def gather_to_rank0(record: dict, result: Path) -> None:
    """all_gather every rank's record (a process group exists under a launcher) and let rank 0 write them."""
    import torch.distributed as dist

    records = [record]
    if dist.is_available() and dist.is_initialized():
        records = [None] * dist.get_world_size()
        dist.all_gather_object(records, record)
    if int(os.environ.get("RANK", "0")) == 0:
        result.write_text(json.dumps(records, indent=1))


def make_model(args) -> None:
    """The ~1B Llama of bench_finetune (hidden 2048, 16 layers, GQA 16/4, 5632) saved with the tokenizer."""
    from finetune.assemble import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    model = bench_finetune.random_llama(len(tokenizer), args.seq, args.small)
    model.to(torch.bfloat16 if CUDA else torch.float32).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)


def pretrain(args) -> None:
    from pretrain.config import PretrainConfig
    from pretrain.trainer import Pretrainer

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokens_per_step = args.seq * world  # one sequence per GPU per step: weak scaling
    cfg = PretrainConfig(model=args.model, output=args.output, variant="keep", source=[args.source], seq_len=args.seq,
                         tokens_per_step=tokens_per_step, max_micro_batch=1, warmup_steps=0,
                         total_tokens=tokens_per_step * (args.warmup + args.steps),
                         gradient_checkpointing="full" if args.ckpt else "none",
                         torch_compile="layers" if args.compile else "off", long_doc_tokens=args.seq)
    trainer = Pretrainer(cfg, show_progress=False)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    steps = [trainer.train_step() for _ in range(args.warmup + args.steps)]
    timed = steps[args.warmup:]
    step_s = statistics.mean(cfg.tokens_per_step / r["tokens_per_s"] for r in timed)
    n_params = sum(p.numel() for p in trainer.model.parameters())  # DTensor numel is the global size
    shape = trainer.model.config.to_dict()
    record = dict(rank=trainer.rank, world=world, fsdp=is_fsdp(trainer.loss_fn), step_s=round(step_s, 3),
                  tok_s_gpu=round(args.seq / step_s),
                  mfu=round(flops_per_seq(shape, n_params, args.seq) / step_s / PEAK, 3), peak_mem_GB=peak_gb(),
                  params_M=round(n_params / 1e6), loss_first=round(steps[0]["loss"], 4),
                  loss_last=round(steps[-1]["loss"], 4), ckpt=cfg.gradient_checkpointing, param_dtype=cfg.param_dtype)
    gather_to_rank0(record, Path(args.result))
    if trainer.rank == 0:
        shutil.rmtree(args.output, ignore_errors=True)


def finetune(args) -> None:
    if not CUDA:
        from longscale.commands.cpu_fsdp import allow_fsdp_on_cpu

        allow_fsdp_on_cpu()  # the CPU smoke test: accelerate enables FSDP only on accelerators
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # random_llama builds on the current GPU
    from finetune.assemble import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    model = bench_finetune.random_llama(len(tokenizer), args.seq, args.small)
    started = time.perf_counter()
    result = bench_finetune.measure("random-1B", model, tokenizer, args.seq, Path(args.data), Path(args.output),
                                    steps=args.steps, warmup=args.warmup, ckpt=args.trainer_ckpt,
                                    compile_="layers" if args.compile else "off")
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_initialized() else 1
    record = dict(rank=int(os.environ.get("RANK", "0")), world=world, fsdp=is_fsdp(model),
                  step_s=result["step_s"], tok_s_gpu=result["tok_s"], mfu=result["mfu"],
                  peak_mem_GB=result["peak_mem_GB"], params_M=result["params_M"], loss_first=result["loss_first"],
                  loss_last=result["loss_last"],
                  ckpt="fsdp" if args.ckpt and world > 1 else ("trainer" if args.trainer_ckpt else "none"),
                  wall_s=round(time.perf_counter() - started, 1))
    gather_to_rank0(record, Path(args.result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["make-model", "pretrain", "finetune"])
    parser.add_argument("--tokenizer")
    parser.add_argument("--model")
    parser.add_argument("--data", help="finetune: long-instance dir written by bench_finetune.write_long_instances")
    parser.add_argument("--source", help="pretrain: text source (file or folder)")
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ckpt", action="store_true", help="activation checkpointing (pretrain: full)")
    parser.add_argument("--trainer-ckpt", action="store_true", help="finetune: the Trainer's gradient checkpointing")
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder layer (both trainers)")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--output", help="trainer output folder (scratch)")
    parser.add_argument("--result", help="JSON file rank 0 writes")
    args = parser.parse_args()
    {"make-model": make_model, "pretrain": pretrain, "finetune": finetune}[args.mode](args)


if __name__ == "__main__":
    main()
