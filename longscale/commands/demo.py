"""`longscale demo`: the data factory end to end on the sample corpus with the embedded model, on CPU.

The demo's generation settings live in DEMO_CONFIG and nowhere else. They are sized for a small CPU machine
(a few short chunks, demonstration prompts for the 135M model, short instances) so it ends in minutes; a
real run uses the defaults (3,000-token chunks, 16,384-token instances, a real chat model).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from datafactory.config import GenerationConfig

DEMO_CONFIG = GenerationConfig(
    engine="transformers",
    model=None,                  # the embedded SmolLM2-135M-Instruct
    prompt_mode="demonstration",  # the 135M model writes no tags zero-shot (DESIGN.md)
    chunk_tokens=200,            # short chunks: a small model copes, and CPU prefill stays cheap
    chunks_per_doc=8,            # 24 pairs from the 3 books: enough to show the reasons, ~1-5 min on 2 cores
    short_ratio=0.5,
    critique="filter",
    max_context=2048,            # small instances, so a CPU finetuning step on them stays affordable
    max_new_tokens=128,          # 72 cut off most normal answers (7/24 accepted at 128 vs 4/24 at 72)
    temperature=0.3,
    seed=0,
    batch_size=6,
)
DEFAULT_OUTPUT = Path("longscale-demo")
FINETUNE_STEPS = 2


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="the data factory, then a few LoRA finetuning steps, on the sample corpus "
                            "with the embedded model", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR",
                        help=f"where to write (default: ./{DEFAULT_OUTPUT}); resumed if it exists")
    parser.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS, metavar="N",
                        help=f"LoRA steps on the demo's own instances (default: {FINETUNE_STEPS}; 0 skips finetuning)")
    parser.add_argument("--chunks-per-doc", type=int, default=DEMO_CONFIG.chunks_per_doc, metavar="N",
                        help=f"chunks per book (default: {DEMO_CONFIG.chunks_per_doc}; 1 = a quick look)")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")
    parser.set_defaults(func=run_demo)


def demo_inputs() -> list[Path]:
    from datafactory.documents import sample_corpus_dir

    return sorted(sample_corpus_dir().glob("*.txt"))


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.open() if line.strip()) if path.exists() else 0


def _finetune_step(out: Path, steps: int) -> int:
    """A few LoRA steps of the embedded model on the demo's instances, with LM loss on the long inputs."""
    from datafactory.embedded import ensure_embedded_model
    from finetune.run import demo_config, run_finetune

    n_instances = _count_lines(out / "instances.jsonl")
    if n_instances == 0:
        print("longscale demo: no instance was accepted, so there is nothing to finetune on; "
              "run the demo again with more chunks (longscale generate --chunks-per-doc ...)")
        return 1
    print(f"\nlongscale demo: finetuning the embedded model on {n_instances} long instances "
          f"({steps} LoRA steps, loss on the long inputs too) -> {out / 'finetune'}/")
    config = demo_config(str(ensure_embedded_model()), [str(out)], str(out / "finetune"), steps=steps)
    result = run_finetune(config)
    losses = [round(x, 3) for x in result.get("training", {}).get("losses", [])]
    if losses:
        print(f"longscale demo: training loss by step: {losses}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from longscale.commands.generate import generate

    inputs = demo_inputs()
    out = args.output
    config = DEMO_CONFIG.model_copy(update={"chunks_per_doc": args.chunks_per_doc})
    print(f"longscale demo: {len(inputs)} books from the sample corpus -> {out}/ "
          f"(embedded model, {config.chunks_per_doc} chunks of {config.chunk_tokens} tokens per book)")
    code = generate([str(p) for p in inputs], config, out, progress=not args.no_progress)
    if code == 0 and args.finetune_steps > 0:
        code = _finetune_step(out, args.finetune_steps)
    print(f"""
What went where:
  {out}/qa.jsonl          every generated pair, accepted or not, with reject_reason and the raw model output
  {out}/instances.jsonl   long training instances (chat messages + the Llama-2 [INST] rendering)
  {out}/*.parquet         the same; datasets.load_dataset("{out}") reads the instances, ("{out}", "qa") the pairs
  {out}/manifest.json     settings, counts, rejection reasons, timings, versions
  {out}/finetune/         the assembled dataset and its stats, the LoRA adapter, loss curve (loss_curve.png)

Next:
  longscale generate --input YOUR_DOCS --output out/ --engine openai --base-url http://HOST:8000/v1 \\
      --model meta-llama/Llama-2-7b-chat-hf --tokenizer /path/to/llama-2-tokenizer   # a real chat model
  longscale finetune --model YOUR_MODEL --short-data ft_short.jsonl --long-data out/ --output runs/ft
  longscale generate --help                                                            # every setting
  (running the demo again into {out} resumes: done pairs are skipped)""")
    return code
