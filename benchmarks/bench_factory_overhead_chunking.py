"""Benchmark (b): chunking + instance building, tokens/s, as a ratio to raw `tokenizers` batch encoding.

Both sides see the same text in the same run: the baseline is `Tokenizer.encode_batch` on the documents
(what any pipeline must pay at least once); ours is the factory's path from text to long instances
(tokenize once, chunk on paragraph/sentence boundaries, choose chunks, fit each instance's window around
its chunk in the same encoding, render the Figure 10 template). Rounds alternate baseline/ours; the ratio
is taken on the best round of each (the least disturbed by other load on a shared machine), and the ratio
of medians is reported too. Target: ratio >= 0.9.

    python3 benchmarks/bench_factory_overhead_chunking.py [--copies 2] [--rounds 5]

With --pipeline-stub it also measures the whole pipeline of one process (tokenize, chunk, prompt, HTTP,
extraction, critique, instances, JSONL) against FaultInjectingServer (a fake OpenAI-compatible server that
answers canned tags after 200 ms): sustained requests/s and max requests in flight, written to
benchmarks/results/factory_pipeline_stub.json. The ceiling is concurrency / 0.2 s.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datafactory.chunking import backend_of, choose_chunks, chunk_document, tokenize_texts  # noqa: E402
from datafactory.documents import sample_corpus_dir  # noqa: E402
from datafactory.instances import build_instance  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "factory_chunking.json"


def factory_path(texts: list[str], tokenizer, chunk_tokens: int, chunks_per_doc, max_context: int) -> int:
    """Text -> chunks -> instances for every document; returns how many instances were built."""
    built = 0
    for doc_index, tokenized in enumerate(tokenize_texts(texts, tokenizer)):
        chunks = chunk_document(tokenized, chunk_tokens)
        for chunk in choose_chunks(chunks, chunks_per_doc, 0, f"doc{doc_index}", chunk_tokens):
            record = {"id": f"{doc_index}-{chunk.index}", "doc_id": f"doc{doc_index}", "answer_type": "normal",
                      "question": "What did Anne decide after the walk to Uppercross?",
                      "answer": "She decided to stay at Kellynch until the Crofts arrived.", "model": "bench"}
            build_instance(record, chunk, tokenized, max_context, tokenizer, same_encoding=True)
            built += 1
    return built


def measure(texts, tokenizer, rounds: int, chunk_tokens: int, chunks_per_doc, max_context: int) -> dict:
    backend = backend_of(tokenizer)
    n_tokens = sum(len(e) for e in backend.encode_batch(texts, add_special_tokens=False))  # also warms caches
    factory_path(texts, tokenizer, chunk_tokens, chunks_per_doc, max_context)
    base_times, ours_times, instances = [], [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        backend.encode_batch(texts, add_special_tokens=False)
        base_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        instances = factory_path(texts, tokenizer, chunk_tokens, chunks_per_doc, max_context)
        ours_times.append(time.perf_counter() - t0)
    base, ours = min(base_times), min(ours_times)
    return {"chunk_tokens": chunk_tokens, "chunks_per_doc": chunks_per_doc, "max_context": max_context,
            "documents": len(texts), "tokens": n_tokens, "instances_per_round": instances,
            "baseline_tokens_per_s": round(n_tokens / base), "factory_tokens_per_s": round(n_tokens / ours),
            "ratio": round(base / ours, 3),
            "ratio_of_medians": round(statistics.median(base_times) / statistics.median(ours_times), 3),
            "baseline_s": [round(t, 4) for t in base_times],
            "factory_s": [round(t, 4) for t in ours_times]}


def pipeline_stub(tokenizer_dir: str, n_docs: int, concurrencies: list[int], delay_ms: float = 200.0) -> dict:
    import tempfile

    from datafactory.config import GenerationConfig
    from datafactory.documents import Document
    from datafactory.pipeline import load_tokenizers, run_generation
    from datafactory.testing.fault_server import FaultInjectingServer

    books = [p.read_text() for p in sorted(sample_corpus_dir().glob("*.txt"))]
    docs = [Document(f"d{i}", books[i % 3][(i // 3) * 300:(i // 3) * 300 + 1500]) for i in range(n_docs)]
    runs = []
    with FaultInjectingServer(delay_ms=delay_ms) as server:
        for concurrency in concurrencies:
            config = GenerationConfig(engine="openai", base_url=server.base_url, tokenizer=tokenizer_dir,
                                      min_doc_tokens=100, chunk_tokens=300, chunks_per_doc=1, max_context=2048,
                                      concurrency=concurrency, max_retries=0)
            tokenizers = load_tokenizers(config)
            server.reset_stats()
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                manifest = run_generation(docs, config, out, progress=False, tokenizers=tokenizers)
                elapsed = time.perf_counter() - t0
            stats = server.stats()
            runs.append({"concurrency": concurrency, "documents": n_docs, "requests": stats["chat_requests"],
                         "seconds": round(elapsed, 2), "requests_per_s": round(stats["chat_requests"] / elapsed),
                         "ceiling_requests_per_s": round(concurrency / (delay_ms / 1000)),
                         "max_in_flight": stats["max_in_flight"], "accepted": manifest["counts"]["accepted"]})
            print(f"pipeline vs stub ({delay_ms:.0f} ms): concurrency {concurrency}: {runs[-1]['requests_per_s']} "
                  f"req/s, max in flight {stats['max_in_flight']}, {stats['chat_requests']} requests")
    return {"benchmark": "whole pipeline of one process against FaultInjectingServer", "delay_ms": delay_ms,
            "machine": platform.node(), "cpus": os.cpu_count(), "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the sample corpus (distinct documents)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the embedded model's)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON figures go")
    parser.add_argument("--pipeline-stub", action="store_true", help="also measure the pipeline against a stub server")
    parser.add_argument("--stub-docs", type=int, default=4500)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    if args.tokenizer is None:
        from datafactory.embedded import ensure_embedded_model

        args.tokenizer = str(ensure_embedded_model())
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    books = [p.read_text() for p in sorted(sample_corpus_dir().glob("*.txt"))]
    texts = [f"Copy {c}.\n\n{book}" for c in range(args.copies) for book in books]
    cases = [(3000, 1, 16384), (3000, 4, 16384), (3000, "all", 16384), (400, "all", 2048)]
    results = [measure(texts, tokenizer, args.rounds, *case) for case in cases]
    report = {"benchmark": "factory chunking + instance building vs raw tokenizers encode_batch",
              "target_ratio": 0.9, "tokenizer": Path(args.tokenizer).name, "machine": platform.node(),
              "cpus": os.cpu_count(), "rounds": args.rounds, "load_avg_at_end": os.getloadavg(), "python": platform.python_version(),
              "results": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"chunk_tokens={r['chunk_tokens']:>5} chunks_per_doc={r['chunks_per_doc']!s:>3} "
              f"max_context={r['max_context']:>5}: baseline {r['baseline_tokens_per_s']:>9,} tok/s, "
              f"factory {r['factory_tokens_per_s']:>9,} tok/s, ratio {r['ratio']:.3f} "
              f"(of medians {r['ratio_of_medians']:.3f}) "
              f"({r['instances_per_round']} instances)")
    print(f"written to {args.output}")
    if args.pipeline_stub:
        stub = pipeline_stub(args.tokenizer, args.stub_docs, [256, 512])
        stub_path = args.output.parent / "factory_pipeline_stub.json"
        stub_path.write_text(json.dumps(stub, indent=2))
        print(f"written to {stub_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
