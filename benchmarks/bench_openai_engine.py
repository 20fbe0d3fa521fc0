"""Benchmark (a): how many requests/s one client process sustains through the `openai` engine.

Against the FaultInjectingServer (a stub in its own process that answers every chat request after a fixed
delay, 200 ms by default, with canned XML) it measures, at concurrency 256, 512 and 1024:
  - sustained requests/s: completions between the 20th and 80th percentile of the run, over that time
    (ramp-up and drain excluded), next to the ceiling concurrency / delay;
  - requests in flight, sampled every 5 ms in the same window (mean and max), as the engine and the
    stub both count them;
  - client CPU per request.
Baselines in the same run, same stub, same request bodies (a ~3,000-token chunk prompt):
  - raw_asyncio: a minimal keep-alive HTTP/1.1 client on asyncio streams (no JSON parsing of replies, no
    retries): what one Python process can do at all;
  - httpx: one httpx.AsyncClient sized to the concurrency (the obvious alternative transport).
Then, if datafactory.pipeline.run_generation exists, the whole pipeline (chunking, prompts, extraction,
critique, instances, output) on the sample corpus through the same stub.

    python benchmarks/bench_openai_engine.py [--delay-ms 200] [--concurrency 256 512 1024] [--rounds 10]

Writes benchmarks/results/openai_engine.json (and prints a table).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from datafactory.engines import SamplingParams  # noqa: E402
from datafactory.engines.openai_engine import OpenAIEngine  # noqa: E402
from datafactory.testing import FaultInjectingServer  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "openai_engine.json"
console = Console()


def chunk_prompt() -> list[dict[str, str]]:
    """A realistic request: the paper-style prompt around ~12,000 characters (~3,000 tokens) of a book."""
    text = (REPO / "datafactory" / "sample_corpus" / "prideprejudice.txt").read_text(encoding="utf-8")
    chunk = text[20_000:32_000]
    return [{"role": "user", "content": f"{chunk}\n\nAsk a question about the text above and answer it. "
             "Put the question in <question></question> tags and the answer in <answer></answer> tags."}]


class Meter:
    """Samples (time, completed, in_flight) every 5 ms while a run is going."""

    def __init__(self, completed, in_flight) -> None:
        self.completed, self.in_flight, self.samples = completed, in_flight, []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append((time.perf_counter(), self.completed(), self.in_flight()))
            await asyncio.sleep(0.005)

    def summary(self, n: int, elapsed: float) -> dict:
        lo, hi = 0.2 * n, 0.8 * n
        window = [s for s in self.samples if lo <= s[1] <= hi]
        if len(window) < 2:
            window = self.samples
        (t0, c0, _), (t1, c1, _) = window[0], window[-1]
        flights = [s[2] for s in window]
        return {"requests": n, "elapsed_s": round(elapsed, 3), "overall_rps": round(n / elapsed, 1),
                "sustained_rps": round((c1 - c0) / max(t1 - t0, 1e-9), 1),
                "in_flight_mean": round(statistics.fmean(flights), 1), "in_flight_max": max(s[2] for s in self.samples)}


async def measure(send_all, completed, in_flight, n: int) -> dict:
    meter, stop = Meter(completed, in_flight), asyncio.Event()
    sampler = asyncio.create_task(meter.run(stop))
    cpu0, t0 = time.process_time(), time.perf_counter()
    ok = await send_all()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stop.set()
    await sampler
    out = meter.summary(n, elapsed)
    out.update(ok=ok, client_cpu_us_per_request=round(cpu / n * 1e6, 1))
    return out


async def run_engine(base_url: str, concurrency: int, n: int, messages) -> dict:
    engine = OpenAIEngine(base_url, concurrency=concurrency, request_timeout=60, max_retries=2)

    async def send_all() -> int:
        results = await engine.agenerate([messages] * n, SamplingParams(max_new_tokens=256, seed=0))
        return sum(r.ok for r in results)

    return await measure(send_all, lambda: engine.stats["attempts"] - engine.in_flight, lambda: engine.in_flight, n)


async def run_httpx(base_url: str, concurrency: int, n: int, messages) -> dict:
    import httpx

    body = json.dumps({"model": "m", "messages": messages, "max_tokens": 256}).encode()
    state = {"done": 0, "in_flight": 0}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> bool:
            async with sem:
                state["in_flight"] += 1
                try:
                    resp = await client.post(f"{base_url}/chat/completions", content=body,
                                             headers={"Content-Type": "application/json"})
                    return resp.status_code == 200 and bool(resp.json()["choices"][0]["message"]["content"])
                finally:
                    state["in_flight"] -= 1
                    state["done"] += 1

        async def send_all() -> int:
            return sum(await asyncio.gather(*(one() for _ in range(n))))

        return await measure(send_all, lambda: state["done"], lambda: state["in_flight"], n)


async def run_raw(port: int, concurrency: int, n: int, messages) -> dict:
    body = json.dumps({"model": "m", "messages": messages, "max_tokens": 256}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    state = {"done": 0, "in_flight": 0, "ok": 0}
    per_conn = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(count):
            state["in_flight"] += 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            state["in_flight"] -= 1
            state["done"] += 1
            state["ok"] += head.startswith(b"HTTP/1.1 200")
        writer.close()

    async def send_all() -> int:
        await asyncio.gather(*(connection(c) for c in per_conn if c))
        return state["ok"]

    return await measure(send_all, lambda: state["done"], lambda: state["in_flight"], n)


def run_pipeline(base_url: str, concurrency: int) -> dict | None:
    """The whole recipe through the stub (critique on): the sample books cut into ~10k-token documents,
    every 256-token chunk asked about, so that many document groups overlap as in a real corpus.
    Tokenizers are loaded before the clock starts (that is start-up, not throughput)."""
    try:
        from datafactory.pipeline import load_tokenizers, run_generation
    except ImportError:
        return None
    from datafactory.config import GenerationConfig
    from datafactory.documents import Document, load_documents, sample_corpus_dir
    from datafactory.embedded import ensure_embedded_model

    config = GenerationConfig(engine="openai", base_url=base_url, model="fault-injecting-stub",
                              tokenizer=str(ensure_embedded_model()), chunk_tokens=256, chunks_per_doc="all",
                              min_doc_tokens=1000, concurrency=concurrency, max_context=4096, critique="filter",
                              prompt_mode="zero-shot")
    books = load_documents([sample_corpus_dir()], config)
    piece = 40_000
    docs = [Document(f"{book.id}-{k}", book.text[k:k + piece]) for book in books
            for k in range(0, len(book.text) - piece // 2, piece)]
    tokenizers = load_tokenizers(config)
    engine = OpenAIEngine.from_config(config)
    samples: list[int] = []
    stop = threading.Event()

    def sample_in_flight() -> None:  # a thread: the pipeline owns its event loop
        while not stop.wait(0.01):
            samples.append(engine.in_flight)

    sampler = threading.Thread(target=sample_in_flight, daemon=True)
    with tempfile.TemporaryDirectory() as out:
        cpu0, t0 = time.process_time(), time.perf_counter()
        sampler.start()
        try:
            manifest = run_generation(docs, config, out, engine=engine, progress=True, tokenizers=tokenizers)
        finally:
            stop.set()
            sampler.join()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    run = manifest.get("this_run", {})
    requests = run.get("requests", 0)
    return {"documents": len(docs), "requests": requests, "qa": run.get("qa_new"), "accepted": run.get("accepted_new"),
            "elapsed_s": round(elapsed, 2), "timings": manifest.get("timings"),
            "requests_per_s": round(requests / elapsed, 1),
            "ceiling_rps": round(concurrency / 0.2, 1) if concurrency else None,
            "client_cpu_us_per_request": round(cpu / max(requests, 1) * 1e6, 1),
            "in_flight_mean": round(statistics.fmean(samples), 1) if samples else None,
            "in_flight_max": engine.max_in_flight,
            "share_of_time_with_requests_in_flight": round(sum(1 for x in samples if x) / max(len(samples), 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--rounds", type=int, default=10, help="requests per run = concurrency x rounds")
    parser.add_argument("--httpx-rounds", type=int, default=3, help="the httpx baseline is slow: fewer rounds")
    parser.add_argument("--httpx-at", type=int, nargs="*", default=[256],
                        help="concurrencies for the httpx baseline (its pool cost grows with the square of it)")
    parser.add_argument("--no-pipeline", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import aiohttp
    import httpx

    messages = chunk_prompt()
    load_before = os.getloadavg()
    rows: list[dict] = []
    plan = [(c, label, kind) for c in args.concurrency
            for label, kind in (("engine (aiohttp)", "engine"), ("raw_asyncio", "raw"), ("httpx", "httpx"))
            if kind != "httpx" or c in args.httpx_at]
    with FaultInjectingServer(delay_ms=args.delay_ms, record_bodies=1) as stub, Progress(console=console) as progress:
        task = progress.add_task("runs", total=len(plan))
        for concurrency, label, kind in plan:
            progress.update(task, description=f"{label} @ {concurrency}")
            stub.reset_stats()
            rounds = args.httpx_rounds if kind == "httpx" else args.rounds
            n = concurrency * rounds
            if kind == "engine":
                result = asyncio.run(run_engine(stub.base_url, concurrency, n, messages))
            elif kind == "raw":
                result = asyncio.run(run_raw(stub.port, concurrency, n, messages))
            else:
                result = asyncio.run(run_httpx(stub.base_url, concurrency, n, messages))
            result.update(client=label, concurrency=concurrency,
                          ceiling_rps=round(concurrency / (args.delay_ms / 1000), 1),
                          stub_max_in_flight=stub.stats()["max_in_flight"])
            rows.append(result)
            progress.advance(task)
        pipeline = None if args.no_pipeline else run_pipeline(stub.base_url, max(args.concurrency[0], 256))

    columns = ("client", "concurrency", "sustained_rps", "ceiling_rps", "in_flight_mean", "in_flight_max",
               "stub_max_in_flight", "client_cpu_us_per_request", "ok", "requests")
    table = Table(title=f"openai engine vs a {args.delay_ms:.0f} ms stub (one client process)")
    for col in columns:
        table.add_column(col.replace("_", " "), overflow="fold")
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    console.print(table)
    if pipeline:
        console.print(f"pipeline through the stub: {pipeline}")
    report = {"benchmark": "openai_engine", "delay_ms": args.delay_ms,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "aiohttp": aiohttp.__version__, "httpx": httpx.__version__,
                          "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                          "note": "a shared 2-core machine: other processes compete for the CPUs"},
              "target": ">= 1000 sustained requests/s with >= 256 in flight", "runs": rows, "pipeline": pipeline,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
