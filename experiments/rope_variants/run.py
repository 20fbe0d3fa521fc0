"""Scaled-down section 4.1: continue pretraining SmolLM2-135M-Instruct at 32k with RoPE unchanged, PI, ABF
and xPos ABF on equal token budgets; report 32k validation perplexity on held-out books and
FIRST-SENTENCE-RETRIEVAL accuracy from 2k to 32k for each variant and for the untouched model.

Writes into --out: results.json (all numbers + every probe answer), results.md (the table),
first_sentence.png, loss_by_position.png, train_loss.png, rope_decay.png.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from longscale.common.plotting import new_figure, save_figure  # noqa: E402
from pretrain.config import PretrainConfig  # noqa: E402
from pretrain.probes.first_sentence import plot_accuracy, run_first_sentence  # noqa: E402
from pretrain.probes.losses import plot_loss_by_position  # noqa: E402
from pretrain.probes.model import HFModel  # noqa: E402
from pretrain.probes.rope_decay import rope_decay  # noqa: E402
from pretrain.trainer import Pretrainer  # noqa: E402

T0 = time.time()


def say(msg: str) -> None:
    print(f"[{time.time() - T0:6.0f}s] {msg}", flush=True)


def val_windows(tokenizer, books: list[Path], length: int, per_book: int) -> list[torch.Tensor]:
    """Consecutive, non-overlapping windows from the start of each held-out book."""
    out = []
    for book in books:
        ids = tokenizer(book.read_text(), add_special_tokens=False)["input_ids"]
        for k in range(min(per_book, len(ids) // length)):
            out.append(torch.tensor([ids[k * length:(k + 1) * length]]))
    return out


def evaluate(model_dir: Path, label: str, args, books: list[Path], texts: list[str]) -> dict:
    say(f"evaluating {label}")
    m = HFModel(model_dir, device=args.device)
    windows = val_windows(m.tokenizer, books, args.seq_len, args.val_windows_per_book)
    losses = torch.stack([m.token_losses(w) for w in windows]).double()
    mean = float(torch.nanmean(losses))
    pos = torch.nanmean(losses, dim=0)
    bins = [{"end": s + min(1000, pos.shape[0] - s), "loss": float(pos[s:s + 1000].mean())}
            for s in range(0, pos.shape[0], 1000)]
    fs = run_first_sentence(m.answer, m.tokenizer, texts, args.lengths, samples=args.samples, seed=0,
                            label=label, progress=False, batch_size=args.samples)
    del m
    gc.collect()
    torch.cuda.empty_cache()
    res = {"val_loss_32k": mean, "val_ppl_32k": math.exp(mean), "val_windows": len(windows),
           "loss_by_position": bins, "first_sentence": fs["accuracy"], "first_sentence_records": fs["records"]}
    say(f"{label}: val ppl@{args.seq_len} {res['val_ppl_32k']:.2f}  first-sentence {fs['accuracy']}")
    return res


def train(variant: str, args, train_books: list[Path]) -> tuple[Path, dict]:
    base = args.abf_base if variant in ("abf", "xpos-abf") else None
    cfg = PretrainConfig(model=args.model, output=str(Path(args.work) / variant), variant=variant, rope_base=base,
                         source=[f"{b.stem}={b}:1" for b in train_books], seq_len=args.seq_len,
                         tokens_per_step=args.tokens_per_step, max_micro_batch=1, total_tokens=args.tokens,
                         learning_rate=args.lr, warmup_steps=args.warmup, min_lr_ratio=0.1, param_dtype="fp32",
                         gradient_checkpointing=args.grad_ckpt, seed=0, device=args.device)
    say(f"training {variant}: {args.tokens:,} tokens at {args.seq_len}, lr {args.lr}")
    trainer = Pretrainer(cfg, show_progress=True)
    summary = trainer.run()
    history = trainer.history
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    tok_s = sorted(h["tokens_per_s"] for h in history)[len(history) // 2]
    say(f"trained {variant}: final loss {history[-1]['loss']:.3f}, median {tok_s:,.0f} tok/s")
    return Path(summary["output"]), {"history": history, "median_tokens_per_s": tok_s, "steps": len(history)}


def table(results: dict, args) -> str:
    lens = [str(n) for n in args.lengths]
    head = ("| model | RoPE | train tokens | final train loss | val ppl @32k | "
            + " | ".join(f"FSR {int(n) // 1024}k" for n in lens) + " |")
    lines = [head, "|" + "---|" * (5 + len(lens))]
    for label, r in results["models"].items():
        fs = r["first_sentence"]
        lines.append(f"| {label} | {r['rope']} | {r.get('train_tokens', 0):,} | "
                     f"{r['final_train_loss']:.3f} | {r['val_ppl_32k']:.2f} | " if r.get("final_train_loss") is not None
                     else f"| {label} | {r['rope']} | 0 | - | {r['val_ppl_32k']:.2f} | ")
        lines[-1] += " | ".join(f"{fs[n]:.2f}" if fs.get(n) is not None else "-" for n in lens) + " |"
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--val-books", default="persuasion.txt,northangerabbey.txt")
    ap.add_argument("--variants", default="none,pi,abf,xpos-abf")
    ap.add_argument("--abf-base", type=float, default=1e6)
    ap.add_argument("--seq-len", type=int, default=32768)
    ap.add_argument("--tokens", type=int, default=3 * 2**20)
    ap.add_argument("--tokens-per-step", type=int, default=65536)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--grad-ckpt", default="none")
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--val-windows-per-book", type=int, default=3)
    ap.add_argument("--work", default="/tmp/rope_runs")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda", help="cuda (the experiment) or cpu (a smoke test)")
    ap.add_argument("--skip-untouched", action="store_true")
    args = ap.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    val_names = set(args.val_books.split(","))
    books = sorted(corpus.glob("*.txt"))
    val_books = [b for b in books if b.name in val_names]
    train_books = [b for b in books if b.name not in val_names]
    texts = [b.read_text() for b in val_books]
    say(f"train books {[b.name for b in train_books]}, held out {[b.name for b in val_books]}")
    results = {"setup": {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()},
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "train_books": [b.name for b in train_books],
               "val_books": [b.name for b in val_books], "models": {}}
    rope_names = {"none": "RoPE b=1e5 (unchanged)", "pi": f"PI x{args.seq_len // 8192}",
                  "abf": f"ABF b={args.abf_base:g}", "xpos-abf": f"xPos ABF b={args.abf_base:g}"}

    def dump():
        slim = json.loads(json.dumps(results))
        (out / "results.json").write_text(json.dumps(slim, indent=1))
        (out / "results.md").write_text(table(results, args) + "\n")

    if not args.skip_untouched:
        r = evaluate(Path(args.model), "untouched", args, val_books, texts)
        results["models"]["untouched"] = r | {"rope": "RoPE b=1e5, trained 8k", "final_train_loss": None}
        dump()
    for variant in args.variants.split(","):
        final, info = train(variant, args, train_books)
        r = evaluate(final, variant, args, val_books, texts)
        results["models"][variant] = r | {"rope": rope_names[variant], "train_tokens": info["steps"] * args.tokens_per_step,
                                          "final_train_loss": info["history"][-1]["loss"],
                                          "median_tokens_per_s": info["median_tokens_per_s"], "train_history": info["history"]}
        dump()
    plot_accuracy({k: v["first_sentence"] for k, v in results["models"].items()}, out / "first_sentence.png")
    plot_loss_by_position({k: {"bins": v["loss_by_position"]} for k, v in results["models"].items()},
                          out / "loss_by_position.png", trained_length=8192)
    fig, ax = new_figure("continual pretraining at 32k: training loss", "tokens (M)", "loss")
    for k, v in results["models"].items():
        if "train_history" in v:
            ax.plot([h["tokens"] / 1e6 for h in v["train_history"]], [h["loss"] for h in v["train_history"]], label=k)
    ax.legend()
    save_figure(fig, out / "train_loss.png")
    rope_decay(head_dim=64, base=1e5, abf_base=args.abf_base, pi_factor=args.seq_len / 8192, max_distance=args.seq_len,
               output=out)
    (out / "rope_decay.json").unlink(missing_ok=True)  # the curve is reproducible from the formulas; keep files few
    dump()
    say("done")
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
