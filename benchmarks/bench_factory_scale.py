"""The factory at corpus scale, against one OpenAI-compatible stub (FaultInjectingServer, a fake that runs no
model): a corpus-size sweep of `longscale generate` beside the old commit, a resume, and a side-by-side with
distilabel and bespokelabs-curator (installed in their own venv by `setup-peers`).

    python3 benchmarks/bench_factory_scale.py sweep --sizes 1000 10000 --repeats 2 [--old-sizes 1000 10000]
    python3 benchmarks/bench_factory_scale.py resume --docs 10000
    python3 benchmarks/bench_factory_scale.py setup-peers           # /tmp/bench-venv: distilabel, curator
    python3 benchmarks/bench_factory_scale.py peers --requests 3000 --repeats 3
    python3 benchmarks/bench_factory_scale.py report                # results json -> md + png

Every run is a fresh process (`python -m longscale.cli generate ...`, the old commit from a `git worktree` of
OLD_COMMIT); runs of the systems compared alternate within each repeat, so they share the machine's load.
Measured per run: process wall, documents/s over that wall, peak RSS (the largest process, from wait4, and
the whole process tree, sampled), CPU seconds (the tree), and the stub's requests in flight sampled every
50 ms while requests were arriving. Results append to benchmarks/results/factory_scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datafactory.documents import sample_corpus_dir  # noqa: E402
from datafactory.testing.fault_server import FaultInjectingServer  # noqa: E402

OLD_COMMIT = "d174c3c"
OLD_TREE = Path("/tmp/old")
WORK = Path(os.environ.get("BENCH_FACTORY_DIR", "/tmp/bench-factory"))
PEER_VENV = Path("/tmp/bench-venv")
RESULTS = REPO / "benchmarks" / "results" / "factory_scale.json"


# ---- corpus and trees ---------------------------------------------------------------------------------------

def corpus(n: int) -> Path:
    """n documents of 20-40 KB cut from the sample books (deterministic), as JSONL."""
    path = WORK / f"corpus-{n}.jsonl"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    text = "".join(p.read_text() for p in sorted(sample_corpus_dir().glob("*.txt")))
    rng = random.Random(n)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for i in range(n):
            size = rng.randint(20_000, 40_000)
            start = rng.randint(0, len(text) - size)
            fh.write(json.dumps({"id": f"doc{i}", "text": text[start:start + size]}) + "\n")
    tmp.rename(path)
    return path


def snapshot(commit: str, tree: Path) -> Path:
    """The files of `commit` in `tree` (git archive: no worktree registered, nothing edited under it)."""
    if not (tree / "datafactory").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        (tree / ".commit").write_text(commit)
    return tree


def old_tree() -> Path:
    return snapshot(OLD_COMMIT, OLD_TREE)


def tokenizer_dir() -> str:
    from datafactory.embedded import ensure_embedded_model

    return str(ensure_embedded_model())


# ---- measuring a process ----------------------------------------------------------------------------------

class StubSampler:
    """Samples the stub's requests in flight every 50 ms (from the first request to the last)."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url.rsplit("/v1", 1)[0] + "/_stats"
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    stats = json.loads(resp.read())
                self.samples.append((time.perf_counter(), stats["chat_requests"], stats["in_flight"]))
            except OSError:
                continue

    def __enter__(self) -> "StubSampler":
        urllib.request.urlopen(urllib.request.Request(self.url.replace("_stats", "_reset"), data=b"{}"), timeout=5)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        active = [s for s in self.samples if s[1] > 0]
        if not active:
            return {"requests": 0}
        total = active[-1][1]
        # sustained: between 10% and 90% of the requests (start-up and tail excluded)
        lo = next(s for s in active if s[1] >= 0.1 * total)
        hi = next(s for s in active if s[1] >= 0.9 * total)
        busy = [s for s in active if s[1] < total]
        return {"requests": total,
                "sustained_requests_per_s": round((hi[1] - lo[1]) / max(1e-9, hi[0] - lo[0]), 1),
                "mean_in_flight": round(statistics.fmean(s[2] for s in busy), 1) if busy else 0.0,
                "requests_window_s": round(active[-1][0] - active[0][0], 2)}


def measure(cmd: list[str], env: dict, cwd: Path = WORK) -> dict:
    """Run `cmd`; wall, rusage of the process tree (wait4), peak tree RSS sampled every 0.2 s."""
    import psutil

    started = time.perf_counter()
    # cwd matters: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak_tree, stop = [0], threading.Event()

    def sample_tree() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.wait(0.2):
            try:
                tree = [root, *root.children(recursive=True)]
                peak_tree[0] = max(peak_tree[0], sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                continue

    sampler = threading.Thread(target=sample_tree, daemon=True)
    sampler.start()
    output_lines: list[str] = []
    reader = threading.Thread(target=lambda: output_lines.extend(proc.stdout), daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stop.set()
    reader.join(5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{''.join(output_lines)[-3000:]}")
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "peak_tree_rss_mb": round(peak_tree[0] / 2**20, 1),
            "output_tail": "".join(output_lines)[-400:]}


def generate_cmd(corpus_path: Path, out: Path, base_url: str, concurrency: int) -> list[str]:
    return [sys.executable, "-m", "longscale.cli", "generate", "--input", str(corpus_path), "--output", str(out),
            "--engine", "openai", "--base-url", base_url, "--model", "stub", "--tokenizer", tokenizer_dir(),
            "--critique", "off", "--chunks-per-doc", "1", "--concurrency", str(concurrency), "--max-retries", "0",
            "--no-progress"]


def run_longscale(tree: Path, corpus_path: Path, out: Path, server: FaultInjectingServer, concurrency: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "true"}
    with StubSampler(server.base_url) as stub:
        result = measure(generate_cmd(corpus_path, out, server.base_url, concurrency), env, cwd=tree)
    result.update(stub.summary())
    manifest = json.loads((out / "manifest.json").read_text())
    result["generation_s"] = manifest["timings"].get("generation_s")
    result["qa"] = manifest["counts"]["qa"]
    return result


def _head(tree: Path) -> str:
    if (tree / ".commit").exists():
        return (tree / ".commit").read_text().strip()
    found = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or str(tree)


def save(section: str, entries: list[dict], meta: dict) -> None:
    """Append entries (each run is saved as it ends, so a stopped benchmark keeps what it measured)."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data.setdefault(section, []).extend({k: v for k, v in e.items() if k != "output_tail"} for e in entries)
    data.setdefault("runs", []).append({"section": section, **meta})
    RESULTS.write_text(json.dumps(data, indent=1))


def machine() -> dict:
    return {"cores": os.cpu_count(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---- sweep and resume -------------------------------------------------------------------------------------

def new_tree() -> Path:
    """The code measured as "new": BENCH_NEW_TREE (a snapshot of one commit), else this checkout."""
    return Path(os.environ.get("BENCH_NEW_TREE", REPO))


def cmd_sweep(args: argparse.Namespace) -> None:
    trees = {"new": new_tree(), "old": old_tree()}
    with FaultInjectingServer(delay_ms=args.delay_ms) as server:
        for repeat in range(args.repeats):
            for n in args.sizes:
                versions = ["new", "old"] if (repeat % 2 == 0) else ["old", "new"]
                for version in versions:
                    if version == "old" and n not in args.old_sizes:
                        continue
                    if version == "old" and repeat >= args.old_repeats:
                        continue
                    out = WORK / f"out-{version}-{n}-{repeat}"
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                    result = run_longscale(trees[version], corpus(n), out, server, args.concurrency)
                    result.update(version=version, documents=n, repeat=repeat, delay_ms=args.delay_ms,
                                  tree=OLD_COMMIT if version == "old" else _head(trees["new"]),
                                  concurrency=args.concurrency, at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  load_1min_at_end=round(os.getloadavg()[0], 2),
                                  documents_per_s=round(n / result["wall_s"], 1))
                    print(json.dumps({k: v for k, v in result.items() if k != "output_tail"}), flush=True)
                    save("sweep", [result], {**machine(), "args": vars(args) | {"func": None}})
                    if not args.keep:
                        subprocess.run(["rm", "-rf", str(out)], check=True)


def cmd_resume(args: argparse.Namespace) -> None:
    entries = []
    with FaultInjectingServer(delay_ms=args.delay_ms) as server:
        out = Path(args.output) if args.output else WORK / f"out-resume-{args.docs}"
        if not (out / "manifest.json").exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
            first = run_longscale(new_tree(), corpus(args.docs), out, server, args.concurrency)
            print("first run", json.dumps({k: v for k, v in first.items() if k != "output_tail"}), flush=True)
        for repeat in range(args.repeats):
            result = run_longscale(new_tree(), corpus(args.docs), out, server, args.concurrency)
            result["tree"] = _head(new_tree())
            manifest = json.loads((out / "manifest.json").read_text())
            result.update(documents=args.docs, repeat=repeat, already_done=manifest["this_run"]["already_done"],
                          new_requests=manifest["this_run"]["requests"])
            print(json.dumps({k: v for k, v in result.items() if k != "output_tail"}), flush=True)
            entries.append(result)
    save("resume", entries, {**machine(), "args": vars(args) | {"func": None}})


# ---- peers ------------------------------------------------------------------------------------------------

PEER_PACKAGES = ["distilabel", "bespokelabs-curator"]


def cmd_setup_peers(args: argparse.Namespace) -> None:
    if not (PEER_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", *PEER_PACKAGES], check=True)
    subprocess.run([str(PEER_VENV / "bin" / "pip"), "freeze"], check=True)


def peer_prompts(n: int) -> Path:
    """n chunks of ~2,000 characters and their Figure 9 prompt (the same job for every system)."""
    from datafactory.prompts import qa_messages

    path = WORK / f"prompts-{n}.jsonl"
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        text = "".join(p.read_text() for p in sorted(sample_corpus_dir().glob("*.txt")))
        with path.open("w") as fh:
            for i in range(n):
                chunk = text[i * 997 % (len(text) - 2500):][:2000]
                fh.write(json.dumps({"id": f"c{i}", "text": chunk,
                                     "prompt": qa_messages(chunk, "normal", False)[0]["content"]}) + "\n")
    return path


PEER_SCRIPTS = REPO / "benchmarks" / "factory_peers.py"


def cmd_peers(args: argparse.Namespace) -> None:
    prompts = peer_prompts(args.requests)
    with FaultInjectingServer(delay_ms=args.delay_ms) as server:
        systems = ["longscale", "distilabel", "curator"]
        for repeat in range(args.repeats):
            order = systems[repeat % 3:] + systems[:repeat % 3]
            for system in order:
                out = WORK / f"peer-{system}-{repeat}"
                subprocess.run(["rm", "-rf", str(out)], check=True)
                if system == "longscale":
                    cmd = [sys.executable, "-m", "longscale.cli", "generate", "--input", str(prompts),
                           "--output", str(out), "--engine", "openai", "--base-url", server.base_url,
                           "--model", "stub", "--tokenizer", tokenizer_dir(), "--critique", "off",
                           "--chunks-per-doc", "1", "--chunk-tokens", "1024", "--max-context", "2048",
                           "--min-doc-tokens", "0", "--concurrency", str(args.concurrency), "--max-retries", "0",
                           "--no-progress"]
                    env, cwd = {**os.environ, "PYTHONPATH": str(new_tree())}, new_tree()
                else:
                    cmd = [str(PEER_VENV / "bin" / "python"), str(PEER_SCRIPTS), system, str(prompts), str(out),
                           server.base_url, str(args.concurrency)]
                    env = {**os.environ, "CURATOR_DISABLE_CACHE": "1", "HOME": str(WORK / "home"),
                           "OPENAI_API_KEY": "sk-stub"}
                    env.pop("PYTHONPATH", None)
                    cwd = WORK
                with StubSampler(server.base_url) as stub:
                    result = measure(cmd, env, cwd=cwd)
                result.update(stub.summary())
                result.update(system=system, repeat=repeat, delay_ms=args.delay_ms, concurrency=args.concurrency,
                              at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                result["cpu_s_per_1000_requests"] = round(1000 * result["cpu_s"] / max(1, result["requests"]), 2)
                result["tree"] = _head(new_tree()) if system == "longscale" else "peer venv"
                print(json.dumps({k: v for k, v in result.items() if k != "output_tail"}), flush=True)
                save("peers", [result], {**machine(), "args": vars(args) | {"func": None}})


# ---- report -------------------------------------------------------------------------------------------------

def _range(values: list[float]) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}"


def cmd_report(args: argparse.Namespace) -> None:
    data = json.loads(RESULTS.read_text())
    lines = ["# The factory at corpus scale (benchmarks/bench_factory_scale.py)", "",
             "Against FaultInjectingServer (a fake OpenAI-compatible stub, no model), on the shared 2-core dev VM;",
             "ranges over repeats (n = runs). `old` is commit d174c3c, run in the same invocation, interleaved.", ""]
    for section in ("sweep", "resume", "peers"):
        loads = [r["load_avg_at_start"][0] for r in data.get("runs", []) if r.get("section") == section
                 and "load_avg_at_start" in r]
        if loads:
            lines.append(f"- {section}: {len(loads)} runs recorded on {os.cpu_count()} cores, "
                         f"1-minute load average when each was saved (its end) {min(loads):g}-{max(loads):g}")
    lines.append("")
    sweep = data.get("sweep", [])
    if sweep:
        lines += ["## Corpus-size sweep (20-40 KB documents, one chunk each, critique off)", "",
                  "| version | documents | stub ms | n | wall s | documents/s | peak RSS MB (largest process) | "
                  "peak RSS MB (process tree) | mean requests in flight | CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in sweep:
            e.setdefault("tree", "d174c3c" if e["version"] == "old" else "HEAD")
        keys = sorted({(e["version"], e["tree"], e["documents"], e["delay_ms"]) for e in sweep},
                      key=lambda k: (k[2], k[0], k[1]))
        for version, tree, n, delay in keys:
            runs = [e for e in sweep if (e["version"], e["tree"], e["documents"], e["delay_ms"]) == (version, tree, n, delay)]
            lines.append(f"| {version} ({tree}) | {n:,} | {delay} | {len(runs)} | {_range([r['wall_s'] for r in runs])} | "
                         f"{_range([r['documents_per_s'] for r in runs])} | "
                         f"{_range([r['peak_rss_mb'] for r in runs])} | {_range([r['peak_tree_rss_mb'] for r in runs])} | "
                         f"{_range([r.get('mean_in_flight', 0) for r in runs])} | {_range([r['cpu_s'] for r in runs])} |")
        lines.append("")
        pairs = _pairs(sweep)
        if pairs:
            lines += ["### Paired runs (new and old back to back in one invocation: the ratio to read)", "",
                      "| measured (UTC) | new tree | documents | new documents/s (1-min load at its end) | "
                      "old documents/s (load) | new / old |",
                      "|---|---|---:|---:|---:|---:|"]
            for new, old in pairs:
                lines.append(f"| {_measured(new)} | {new['tree']} | {new['documents']:,} | "
                             f"{new['documents_per_s']:g}{_load(new)} | {old['documents_per_s']:g}{_load(old)} | "
                             f"{new['documents_per_s'] / old['documents_per_s']:.2f}x |")
            lines.append("")
    resume = data.get("resume", [])
    if resume:
        lines += ["## Resume of a finished output (every document done)", "",
                  "| tree | documents | n | wall s (process, incl. start-up) | generation s (manifest) | new requests |",
                  "|---|---:|---:|---:|---:|---:|"]
        for tree, n in sorted({(e.get("tree", "before 17a1b46"), e["documents"]) for e in resume}):
            runs = [e for e in resume if (e.get("tree", "before 17a1b46"), e["documents"]) == (tree, n)]
            lines.append(f"| {tree} | {n:,} | {len(runs)} | {_range([r['wall_s'] for r in runs])} | "
                         f"{_range([r['generation_s'] for r in runs])} | {_range([r['new_requests'] for r in runs])} |")
        lines.append("")
    peers = data.get("peers", [])
    if peers:
        lines += ["## Side by side (same prompts, same stub at 200 ms, 256 in flight)", "",
                  "| system | n | requests | sustained requests/s | CPU s per 1,000 requests | mean requests in flight | "
                  "wall s | peak RSS MB (tree) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        def peer_key(e: dict) -> tuple:  # the peers' venv is one "tree" across sessions: keep each day apart
            return e["system"], e.get("tree", ""), e["at"][:10] if "at" in e else "earlier", e["requests"]

        for key in sorted({peer_key(e) for e in peers}, key=lambda k: (k[2], k[3], k[0], k[1])):
            runs = [e for e in peers if peer_key(e) == key]
            system, tree, day = key[0], key[1], key[2]
            if runs:
                lines.append(f"| {system} ({tree}, {day}) | {len(runs)} | {_range([r['requests'] for r in runs])} | "
                             f"{_range([r['sustained_requests_per_s'] for r in runs])} | "
                             f"{_range([r['cpu_s_per_1000_requests'] for r in runs])} | "
                             f"{_range([r['mean_in_flight'] for r in runs if 'mean_in_flight' in r])} | "
                             f"{_range([r['wall_s'] for r in runs])} | {_range([r['peak_tree_rss_mb'] for r in runs])} |")
        lines.append("")
    (RESULTS.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if sweep:
        _plot(sweep)


# sessions before runs carried their own time: the day each new tree was measured (git log of the results)
_MEASURED_BEFORE = {"dcc066b": "2026-12-03", "17a1b46": "2026-12-02", "b9a0f78": "2026-12-02",
                    "0574ade": "2026-12-02", "3c0d193": "2026-12-02"}


def _measured(entry: dict) -> str:
    if "at" in entry:
        return entry["at"][:16].replace("T", " ")
    return _MEASURED_BEFORE.get(entry.get("tree", ""), "-")


def _load(entry: dict) -> str:
    return f" ({entry['load_1min_at_end']:g})" if "load_1min_at_end" in entry else ""


def _pairs(sweep: list[dict]) -> list[tuple[dict, dict]]:
    """(new, old) runs recorded one after the other (same size, repeat and stub delay): cmd_sweep's pairs."""
    pairs, i = [], 0
    while i + 1 < len(sweep):
        a, b = sweep[i], sweep[i + 1]
        same = all(a.get(k) == b.get(k) for k in ("documents", "repeat", "delay_ms"))
        if same and {a["version"], b["version"]} == {"new", "old"}:
            pairs.append((a, b) if a["version"] == "new" else (b, a))
            i += 2
        else:
            i += 1
    return pairs


def _plot(sweep: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 6))
    series = sorted({(e["version"], e.get("tree", "")) for e in sweep}, key=lambda k: (k[0] == "old", k[1]))
    for version, tree in series:  # one series per commit: earlier sessions' "new" code is not this one
        runs = [e for e in sweep if (e["version"], e.get("tree", "")) == (version, tree)]
        marker, label = ("s" if version == "old" else "o"), f"{version} {tree[:24]}"
        ax1.scatter([r["documents"] for r in runs], [r["documents_per_s"] for r in runs], marker=marker, label=label)
        ax2.scatter([r["documents"] for r in runs], [r["peak_tree_rss_mb"] for r in runs], marker=marker,
                    label=f"{label} (tree)")
    for ax, title in ((ax1, "documents/s (process wall)"), (ax2, "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("documents (20-40 KB)")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=2)
    fig.suptitle("longscale generate vs a 5 ms OpenAI-compatible stub (shared 2-core VM)")
    fig.tight_layout()
    fig.savefig(RESULTS.with_suffix(".png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("sweep")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--old-sizes", type=int, nargs="*", default=[1000, 10000])
    p.add_argument("--old-repeats", type=int, default=99)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--delay-ms", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--keep", action="store_true")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("resume")
    p.add_argument("--docs", type=int, default=10000)
    p.add_argument("--output", help="a finished output of the same corpus (e.g. a kept sweep run)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--delay-ms", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=64)
    p.set_defaults(func=cmd_resume)
    p = sub.add_parser("setup-peers")
    p.set_defaults(func=cmd_setup_peers)
    p = sub.add_parser("peers")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--delay-ms", type=float, default=200)
    p.add_argument("--concurrency", type=int, default=256)
    p.set_defaults(func=cmd_peers)
    p = sub.add_parser("report")
    p.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
