"""Multi-GPU scaling of both trainers at 32k: tokens/s per GPU, efficiency against one GPU, peak memory per GPU.

For N in 1, 2, 4, 8 (up to the visible GPUs, or --gpus): the pretrainer under torchrun (FSDP2 from
pretrain/distributed.py) and the finetuner under accelerate launch (configs/fsdp/fsdp_2gpu.yaml with
num_processes N); N = 1 runs each trainer plain, as it ships for one GPU, so the efficiency includes all of
FSDP's cost. Weak scaling: one 32k sequence (pretrain) or one 32k row (finetune) per GPU per optimizer
step, so per-GPU work is fixed and efficiency = tokens/s per GPU at N / tokens/s at 1 (issue target: >= 0.9
at 2). Model: bench_finetune.random_llama, ~1B Llama (hidden 2048, 16 layers, 16 heads / 4 KV heads,
intermediate 5632, the tokenizer's vocabulary). Both trainers run their fast one-GPU setting at every N:
per-layer torch.compile (--no-compile to turn it off; not yet run under FSDP on GPUs) and no activation
checkpointing (a ~1B model at 32k fits in one H200 without it); --ckpt turns checkpointing on at every N
(pretrain: full; finetune: FSDP's for N > 1, the Trainer's for N = 1). Each launch is a fresh set of
processes (~1 min each on GPUs, more with compile); the report is rewritten after every launch, and --merge
keeps earlier rows, so the runs can be split over several calls (10 minutes a device call):

    python3 benchmarks/bench_scaling.py --tokenizer DIR --trainers pretrain [--gpus 1,2] [--merge]
    python3 benchmarks/bench_scaling.py --tokenizer DIR --small --out /tmp/smoke   # CPU: tiny model, gloo, 2 procs

Writes OUT/scaling_gpu.{json,md} (scaling_smoke.* with --small).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_finetune import write_long_instances  # noqa: E402  (puts the repository on sys.path)

from finetune.assemble import load_tokenizer  # noqa: E402

WORKER = HERE / "scaling_worker.py"
SETTINGS = ("trainer", "seq", "ckpt", "compile")  # rows compared for efficiency share these
CORPUS = REPO / "datafactory" / "sample_corpus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_config(n: int, args, work: Path) -> Path:
    """The shipped FSDP config (the CPU/gloo one with --small) with N processes and the chosen checkpointing."""
    base = REPO / "configs" / "fsdp" / ("cpu_gloo_2proc.yaml" if args.small else "fsdp_2gpu.yaml")
    config = yaml.safe_load(base.read_text())
    config.update(num_processes=n, main_process_port=free_port())
    config["fsdp_config"]["fsdp_activation_checkpointing"] = bool(args.ckpt)
    path = work / f"accelerate_{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(trainer: str, n: int, args, work: Path, result: Path) -> list[str]:
    common = ["--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup), "--result", str(result),
              "--output", str(work / f"run-{trainer}-{n}")] + (["--small"] if args.small else [])
    common += ["--compile"] if args.compile else []
    if trainer == "pretrain":
        worker = [str(WORKER), "pretrain", "--model", str(work / "model"), "--source", str(CORPUS), *common]
        worker += ["--ckpt"] if args.ckpt else []
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)] if n > 1 else []
    else:
        worker = [str(WORKER), "finetune", "--tokenizer", args.tokenizer, "--data", str(work / "data"), *common]
        worker += (["--ckpt"] if n > 1 else ["--trainer-ckpt"]) if args.ckpt else []
        launcher = (["-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(n, args, work))]
                    if n > 1 else [])
    return [sys.executable, *launcher, *worker]


def launch(trainer: str, n: int, args, work: Path) -> dict:
    result = work / f"result-{trainer}-{n}.json"
    result.unlink(missing_ok=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if args.small:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // n))
    started = time.perf_counter()
    done = subprocess.run(command(trainer, n, args, work, result), env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    row = dict(trainer=trainer, gpus=n, seq=args.seq, ckpt=bool(args.ckpt), compile=bool(args.compile),
               wall_s=round(time.perf_counter() - started, 1),
               launcher="plain" if n == 1 else ("torchrun" if trainer == "pretrain" else "accelerate launch"))
    if done.returncode or not result.exists():
        return row | dict(error=(done.stderr or done.stdout)[-1500:])
    ranks = json.loads(result.read_text())
    per_gpu = [r["tok_s_gpu"] for r in ranks]
    return row | dict(fsdp=all(r["fsdp"] for r in ranks), tok_s_gpu=round(statistics.mean(per_gpu)),
                      tok_s_gpu_min=min(per_gpu), tok_s_total=sum(per_gpu),
                      step_s=max(r["step_s"] for r in ranks), mfu=round(statistics.mean(r["mfu"] for r in ranks), 3),
                      peak_mem_GB=[r["peak_mem_GB"] for r in ranks], params_M=ranks[0]["params_M"],
                      loss_first=ranks[0]["loss_first"], loss_last=ranks[0]["loss_last"])


def with_efficiency(rows: list[dict]) -> list[dict]:
    """scaling_efficiency = tokens/s per GPU over the 1-GPU figure of the same trainer and settings."""
    for row in rows:
        one = next((r for r in rows if r["gpus"] == 1 and "tok_s_gpu" in r and
                    all(r.get(k) == row.get(k) for k in SETTINGS)), None)
        if "tok_s_gpu" in row and one:
            row["scaling_efficiency"] = round(row["tok_s_gpu"] / one["tok_s_gpu"], 3)
    return rows


def error_line(text: str) -> str:
    """The last line naming an error (a launcher's own traceback ends with its ChildFailedError summary)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line and "ChildFailedError" not in line]
    return (named or lines or ["?"])[-1][:120]


def report(rows: list[dict], env: dict, out: Path, name: str) -> None:
    rows = with_efficiency(sorted(rows, key=lambda r: (*(str(r.get(k)) for k in SETTINGS), r["gpus"])))
    (out / f"{name}.json").write_text(json.dumps({"env": env, "runs": rows}, indent=2))
    lines = [f"# Scaling across GPUs ({env['device']})", "",
             ", ".join(f"{k} {v}" for k, v in env.items() if k != "device") + ". Weak scaling: one sequence (pretrain) "
             "or one row (finetune) per GPU per step; efficiency = tokens/s per GPU / the same trainer's 1-GPU "
             "figure. Peak memory: torch.cuda.max_memory_allocated per rank.", "",
             "| trainer | GPUs | launcher | seq | ckpt | compile | tokens/s per GPU (min) | tokens/s total | "
             "scaling efficiency | peak mem per GPU (GB, max) | MFU | step (s) | loss first -> last |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        launcher = r["launcher"] + (" FSDP2" if r.get("fsdp") else "")
        head = f"| {r['trainer']} | {r['gpus']} | {launcher} | {r['seq']} | {r['ckpt']} | {r.get('compile')} |"
        if "error" in r:
            lines.append(f"{head} error: {error_line(r['error'])} | | | | | | |")
            continue
        peak = max((m for m in r["peak_mem_GB"] if m is not None), default=None)
        lines.append(f"{head} {r['tok_s_gpu']:,} ({r['tok_s_gpu_min']:,}) | {r['tok_s_total']:,} | "
                     f"{r.get('scaling_efficiency', '-')} | {peak} | {r['mfu']} | {r['step_s']} | "
                     f"{r['loss_first']} -> {r['loss_last']} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def gpu_counts(args) -> list[int]:
    if args.gpus:
        return [int(n) for n in args.gpus.split(",")]
    visible = 2 if args.small else torch.cuda.device_count()
    return sorted({n for n in (1, 2, 4, 8) if n <= visible} | ({visible} if visible else set()))


def environment(args) -> dict:
    import accelerate
    import transformers

    device = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available()
              else f"CPU smoke test ({os.cpu_count()} cores, gloo)")
    return {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "steps_timed": args.steps, "warmup_steps": args.warmup}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True,
                        help="HF folder: vocabulary of the random model, chat template of the data")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--trainers", default="pretrain,finetune")
    parser.add_argument("--gpus", help="comma-separated process counts (default: 1, 2, 4, 8 up to the visible GPUs)")
    parser.add_argument("--seq", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per launch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (FSDP and allocator warm-up)")
    parser.add_argument("--ckpt", action="store_true", help="activation checkpointing at every N")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="per-layer torch.compile in both trainers (default: on with CUDA, off on CPU)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of an earlier report that this call does not redo")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per launch")
    parser.add_argument("--small", action="store_true", help="CPU smoke test: tiny model, gloo, N in 1,2, seq 256")
    args = parser.parse_args()
    if args.small:
        args.seq = 256 if args.seq == 32768 else args.seq
    if args.compile is None:
        args.compile = torch.cuda.is_available()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "scaling_smoke" if args.small else "scaling_gpu"
    counts, trainers = gpu_counts(args), args.trainers.split(",")
    env = environment(args)
    rows: list[dict] = []
    if args.merge and (out / f"{name}.json").exists():
        redo = {(t, args.seq, bool(args.ckpt), bool(args.compile), n) for t in trainers for n in counts}
        rows = [r for r in json.loads((out / f"{name}.json").read_text())["runs"]
                if (*(r.get(k) for k in SETTINGS), r["gpus"]) not in redo]
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        work = Path(tmp)
        tokenizer = load_tokenizer(args.tokenizer)
        write_long_instances(tokenizer, args.seq, max(counts) * (args.warmup + args.steps) + 1, work / "data")
        if "pretrain" in trainers:  # in a child process, so this one never holds GPU memory
            subprocess.run([sys.executable, str(WORKER), "make-model", "--tokenizer", args.tokenizer, "--seq",
                            str(args.seq), "--out", str(work / "model")] + (["--small"] if args.small else []),
                           check=True)
        for trainer in trainers:
            for n in counts:
                row = launch(trainer, n, args, work)
                print(json.dumps(row), flush=True)
                rows.append(row)
                report(rows, env, out, name)
    print((out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
