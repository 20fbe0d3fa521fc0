"""vLLM on one GPU: the factory through `vllm serve` and in process, beside `transformers serve` and vLLM's own
benchmark, guided decoding on and off, and an ABF checkpoint served at 32k (issue 17).

Steps, most important first; each one is recorded in results.json as it ends (an error is recorded, the run goes
on), and a step that would not fit the time left (--time-budget) is skipped and recorded so:

  servers     vllm serve of the embedded model (E), of its ABF conversion at max_model_len 32768 (ABF), and
              transformers serve of E (TS), started together
  ceiling     `longscale generate` through E (greedy, no critique, every chunk of the sample corpus) and
              `vllm bench serve` with the same prompts (rendered with the chat template), the same max tokens
              and the same concurrency, alternated, prefix cache reset before each; ratio = factory req/s /
              bench req/s. vLLM's /metrics before/after each run, its gauges sampled during it
  guided      `longscale generate` sampled with the self-critique filter, --guided off vs xml, same chunks
  inprocess   `longscale generate --engine vllm` (greedy, same chunks as ceiling): req/s, and the texts equal
              to the HTTP run's
  tserve      the factory through TS and through E on the same subset of chunks, same max_new_tokens
  abf_long    greedy continuations of a few long prompts (8k-31k tokens): transformers vs the ABF server
  eval_openai `longscale eval --engine openai` through the ABF server (factory-qa task, lengths to 32k)
  eval_vllm   `longscale eval --engine vllm` in process (beside the idle servers), same settings

  python3 experiments/vllm_gpu/run.py --model DIR --out DIR [--time-budget S]     (device_run.sh calls it)
  python3 experiments/vllm_gpu/run.py --model DIR --out DIR --smoke               (CPU: FaultInjectingServer
        stands in for vllm serve, tiny sizes; checks this script, measures nothing)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from datafactory.documents import sample_corpus_dir  # noqa: E402

CLI = ("-m", "longscale.commands.main")  # `longscale`, without needing the console script installed
SERVED_NAME = "SmolLM2-135M-Instruct"
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
START = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - START:6.0f}s] {msg}", flush=True)


class Run:
    """results.json / log bookkeeping and the time budget."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.budget = out, budget
        self.results: dict = {"machine": machine(), "steps": {}, "skipped": {}}

    def left(self) -> float:
        return self.budget - (time.monotonic() - START)

    def save(self) -> None:
        (self.out / "vllm_gpu.json").write_text(json.dumps(self.results, indent=1, default=str))

    def step(self, name: str, need_s: float, fn, *args, **kwargs):
        if self.left() < need_s:
            self.results["skipped"][name] = f"{self.left():.0f} s left, needs ~{need_s:.0f} s"
            log(f"skip {name}: {self.results['skipped'][name]}")
            self.save()
            return None
        log(f"step {name}")
        t0 = time.monotonic()
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            value = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            log(f"{name} failed: {value['error'][:500]}")
        if isinstance(value, dict):
            value["step_s"] = round(time.monotonic() - t0, 1)
        self.results["steps"][name] = value
        self.save()
        return value


def machine() -> dict:
    info = {"python": sys.version.split()[0]}
    try:
        import torch

        info.update(torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0)
                    if torch.cuda.is_available() else "none", cpus=os.cpu_count())
        import transformers

        info["transformers"] = transformers.__version__
        import vllm

        info["vllm"] = vllm.__version__
    except Exception as exc:  # the smoke run has no vllm
        info["import_error"] = repr(exc)
    return info


# ---- servers -----------------------------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, cmd: list[str], port: int, logfile: Path, env: dict | None = None) -> None:
        self.name, self.cmd, self.port, self.logfile = name, cmd, port, logfile
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.started = self.ready_s = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=open(self.logfile, "w"), stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        return self

    def wait_ready(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.tail(1500)}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        self.ready_s = round(time.monotonic() - self.started, 1)
                        return self.ready_s
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s: {self.tail(1500)}")

    def tail(self, chars: int) -> str:
        return self.logfile.read_text(errors="replace")[-chars:] if self.logfile.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def vllm_serve_cmd(model: Path, port: int, max_model_len: int, kv_cache_gib: int) -> list[str]:
    """`vllm serve` (python -m: the wheels are installed with --target, so there is no `vllm` script on PATH) with
    the flags that ran on the H200 (shared/vllm/README.md): eager mode, FlashAttention, xgrammar. A fixed KV cache
    (--kv-cache-memory-bytes) instead of --gpu-memory-utilization: servers started together each profile the GPU
    while the others load, and one saw -6.8 GiB free for its cache (2026-12-03) and did not start."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model), "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--max-model-len", str(max_model_len),
            "--kv-cache-memory-bytes", str(kv_cache_gib * 2**30), "--enforce-eager", "--attention-backend", "FLASH_ATTN",
            "--structured-outputs-config.backend", "xgrammar", "--seed", "0", "--disable-uvicorn-access-log"]


def http_json(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw.strip() else {}


def reset_prefix_cache(server: Server) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(server.url + "/reset_prefix_cache", data=b"", method="POST"),
                               timeout=10).read()
        return True
    except OSError:
        return False


# ---- vLLM /metrics -------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(vllm:[a-zA-Z0-9_:]+)(?:\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$")


def read_metrics(server: Server) -> dict[str, float]:
    """vLLM's Prometheus samples, summed over label sets (engine, finished_reason, ...)."""
    try:
        with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and "_bucket" not in match.group(1):
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values


def metrics_delta(before: dict, after: dict) -> dict:
    keys = ("vllm:request_success_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
            "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:num_preemptions_total")
    delta = {k.removeprefix("vllm:"): after.get(k, 0) - before.get(k, 0) for k in keys if k in after}
    for hist in ("e2e_request_latency_seconds", "time_to_first_token_seconds", "request_queue_time_seconds",
                 "inter_token_latency_seconds"):
        n = after.get(f"vllm:{hist}_count", 0) - before.get(f"vllm:{hist}_count", 0)
        if n:
            delta[f"mean_{hist}"] = round((after[f"vllm:{hist}_sum"] - before.get(f"vllm:{hist}_sum", 0)) / n, 4)
    return delta


class GaugeSampler:
    """Polls the server's gauges every 0.25 s while a run goes: were 256 requests really running?"""

    def __init__(self, server: Server) -> None:
        self.server, self.samples = server, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            values = read_metrics(self.server)
            if values:
                self.samples.append({g: values.get(g) for g in GAUGES})

    def __enter__(self) -> "GaugeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        running = [s.get("vllm:num_requests_running") or 0 for s in self.samples]
        out = {"samples": len(self.samples), "busy_s": 0.25 * sum(1 for r in running if r > 0)}
        for g in GAUGES:
            vals = [s[g] for s in self.samples if s.get(g) is not None]
            busy = [v for v in vals if v > 0] if g == "vllm:num_requests_running" else vals
            if vals:
                out[g.removeprefix("vllm:")] = {"max": max(vals), "mean_while_busy": round(statistics.mean(busy), 1)
                                                if busy else 0}
        return out


# ---- the factory --------------------------------------------------------------------------------------------

def cli_flags(flags: dict) -> list[str]:
    out = []
    for key, value in flags.items():
        flag = key.replace("_", "-")
        out += ([f"--{flag}"] if value else [f"--no-{flag}"]) if isinstance(value, bool) else [f"--{flag}", str(value)]
    return out


def generate(args, out_dir: Path, inputs: list[Path], timeout: float, **flags) -> dict:
    """One real `longscale generate` run (a subprocess); its manifest's figures."""
    cmd = [sys.executable, *CLI, "generate", "--input", *map(str, inputs), "--output", str(out_dir),
           "--no-progress", "--chunk-tokens", str(args.chunk_tokens), "--chunks-per-doc", "all",
           "--max-new-tokens", str(args.max_new_tokens), "--prompt-mode", "demonstration", "--tokenizer",
           str(args.model), "--concurrency", str(args.concurrency), "--request-timeout", "300"]
    cmd += cli_flags(flags)
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    wall = time.monotonic() - t0
    manifest_path = out_dir / "manifest.json"
    if not manifest_path.exists():
        raise RuntimeError(f"generate exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    manifest = json.loads(manifest_path.read_text())
    run = manifest.get("this_run", {})
    return {"status": manifest.get("status"), "exit": done.returncode, "wall_s": round(wall, 1),
            "setup_s": manifest.get("timings", {}).get("setup_s"),
            "generation_s": manifest.get("timings", {}).get("generation_s"), "requests": run.get("requests"),
            "requests_per_s": run.get("requests_per_s"), "qa": manifest["counts"]["qa"],
            # the servers' own usage.completion_tokens summed by the factory: also for transformers serve, which
            # has no /metrics
            "usage_output_tokens": run.get("output_tokens"), "usage_output_tokens_per_s": run.get("output_tokens_per_s"),
            "accepted": manifest["counts"]["accepted"], "acceptance_rate": manifest["counts"]["acceptance_rate"],
            "rejection_reasons": manifest.get("rejection_reasons"), "engine_errors": run.get("engine_errors"),
            "first_engine_error": run.get("first_engine_error"),
            "stderr_tail": done.stderr[-600:] if done.returncode else ""}


def factory_prompts(args, inputs: list[Path]) -> list[str]:
    """The factory's QA prompts for `inputs`, rendered with the model's chat template (what vllm serve renders
    for a chat request), for `vllm bench serve` --skip-chat-template."""
    from transformers import AutoTokenizer

    from datafactory.config import GenerationConfig
    from datafactory.documents import load_documents
    from datafactory.pipeline import plan_document

    config = GenerationConfig(engine="openai", base_url="http://unused", tokenizer=str(args.model),
                              chunk_tokens=args.chunk_tokens, chunks_per_doc="all", prompt_mode="demonstration",
                              max_new_tokens=args.max_new_tokens)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    items = [item for doc in load_documents([str(p) for p in inputs], config)
             for item in plan_document(doc, config, tokenizer)]
    return [tokenizer.apply_chat_template(item.messages, tokenize=False, add_generation_prompt=True) for item in items]


def bench(args, server: Server, prompts_file: Path, n: int, result_dir: Path, tag: str) -> dict:
    """`vllm bench serve`: the same prompts, max tokens, greedy, concurrency; stops at EOS like the factory."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "openai",
           "--base-url", server.url, "--endpoint", "/v1/completions", "--model", SERVED_NAME,
           "--tokenizer", str(args.model), "--dataset-name", "custom", "--dataset-path", str(prompts_file),
           "--skip-chat-template", "--custom-output-len", str(args.max_new_tokens), "--num-prompts", str(n),
           "--max-concurrency", str(args.concurrency), "--request-rate", "inf", "--temperature", "0",
           "--disable-shuffle", "--seed", "0", "--save-result", "--result-dir", str(result_dir),
           "--result-filename", f"{tag}.json", "--disable-tqdm"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    path = result_dir / f"{tag}.json"
    if not path.exists():
        raise RuntimeError(f"vllm bench serve exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    data = json.loads(path.read_text())
    return {k: data.get(k) for k in ("completed", "failed", "duration", "request_throughput", "output_throughput",
                                     "total_input_tokens", "total_output_tokens", "mean_ttft_ms", "mean_tpot_ms")}


def measured(server: Server, fn, *args, **kwargs) -> dict:
    reset = reset_prefix_cache(server)
    before = read_metrics(server)
    with GaugeSampler(server) as sampler:
        result = fn(*args, **kwargs)
    result["vllm_metrics"] = metrics_delta(before, read_metrics(server))
    result["vllm_gauges"] = sampler.summary()
    result["prefix_cache_reset"] = reset
    busy = result["vllm_gauges"]["busy_s"]
    if busy and result.get("requests"):
        result["requests_per_vllm_busy_s"] = round(result["requests"] / busy, 2)
    if result.get("generation_s") and result["vllm_metrics"].get("generation_tokens_total") is not None:
        result["output_tokens_per_s"] = round(result["vllm_metrics"]["generation_tokens_total"]
                                              / result["generation_s"], 1)
    return result


def texts(out_dir: Path) -> dict[str, str]:
    from datafactory.output import iter_qa_pairs

    return {pair.id: pair.raw or "" for pair in iter_qa_pairs(out_dir)}


def compare_texts(a: dict[str, str], b: dict[str, str]) -> dict:
    common = sorted(set(a) & set(b))
    same = sum(1 for k in common if a[k] == b[k])
    prefix = [len(os.path.commonprefix([a[k] or "", b[k] or ""])) / max(1, len(a[k] or "")) for k in common]
    return {"compared": len(common), "identical": same, "identical_fraction": round(same / max(1, len(common)), 4),
            "mean_common_prefix_fraction": round(statistics.mean(prefix), 4) if prefix else None}


# ---- steps --------------------------------------------------------------------------------------------------

def step_servers(args, run: Run, servers: dict[str, Server]) -> dict:
    for server in servers.values():
        server.start()
    out = {}
    for name, server in servers.items():
        try:
            out[name] = {"ready_s": server.wait_ready(args.startup_timeout), "cmd": " ".join(server.cmd[2:])}
        except Exception as exc:
            out[name] = {"error": str(exc)[-1500:]}
    return out


def step_ceiling(args, run: Run, e: Server, inputs: list[Path], work: Path) -> dict:
    prompts = factory_prompts(args, inputs)
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    out = {"chunks": len(prompts), "concurrency": args.concurrency, "max_new_tokens": args.max_new_tokens,
           "factory": [], "bench": []}
    for rep in range(args.reps):
        gen_dir = work / f"ceiling_factory_{rep}"
        out["factory"].append(measured(e, generate, args, gen_dir, inputs, 300, engine="openai",
                                       base_url=e.url + "/v1", model=SERVED_NAME, temperature=0, critique="off"))
        if not args.smoke:
            out["bench"].append(measured(e, bench, args, e, prompts_file, len(prompts), work, f"bench_{rep}"))
        run.results["steps"]["ceiling"] = out
        run.save()
    f = [r["requests_per_s"] for r in out["factory"] if r.get("requests_per_s")]
    b = [r["request_throughput"] for r in out["bench"] if r.get("request_throughput")]
    if f and b:
        ratios = [x / y for x, y in zip(f, b)]
        out["ratio_factory_over_bench"] = {"per_rep": [round(r, 3) for r in ratios], "mean": round(statistics.mean(
            ratios), 3), "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
    return out


def step_guided(args, run: Run, e: Server, inputs: list[Path], work: Path) -> dict:
    out = {}
    for guided in ("off", "xml"):
        out[guided] = measured(e, generate, args, work / f"guided_{guided}", inputs, 300, engine="openai",
                               base_url=e.url + "/v1", model=SERVED_NAME, guided=guided, critique="filter")
        run.results["steps"]["guided"] = out
        run.save()
    regex = re.compile(r"<question>[^<>]+</question>\n<answer>[^<>]+</answer>")
    for guided in ("off", "xml"):
        raws = texts(work / f"guided_{guided}").values()
        out[guided]["raw_matches_tag_regex"] = sum(1 for t in raws if t and regex.fullmatch(t))
    return out


def step_inprocess(args, run: Run, inputs: list[Path], work: Path) -> dict:
    out = generate(args, work / "inprocess", inputs, 400, engine="vllm", model=str(args.model), temperature=0,
                   critique="off", gpu_memory_utilization=args.inprocess_util, max_model_len=4096,
                   enforce_eager=True)
    http = work / "ceiling_factory_0"
    if http.exists():
        out["vs_http_greedy"] = compare_texts(texts(http), texts(work / "inprocess"))
    return out


def step_tserve(args, run: Run, ts: Server, e: Server, work: Path) -> dict:
    subset = [sample_corpus_dir() / "persuasion.txt"]
    out = {"input": f"persuasion.txt, {args.tserve_chunks} chunks (seeded choice)", "greedy": True,
           "max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency}
    out["vllm"] = measured(e, generate, args, work / "tserve_vllm", subset, 300, engine="openai",
                           base_url=e.url + "/v1", model=SERVED_NAME, temperature=0, critique="off",
                           chunks_per_doc=args.tserve_chunks)
    run.results["steps"]["tserve"] = out
    try:
        out["transformers_serve"] = generate(args, work / "tserve_ts", subset, args.tserve_timeout, engine="openai",
                                             base_url=ts.url + "/v1", model=str(args.model), temperature=0,
                                             critique="off", chunks_per_doc=args.tserve_chunks)
        out["texts_vllm_vs_transformers_serve"] = compare_texts(texts(work / "tserve_vllm"), texts(work / "tserve_ts"))
    except subprocess.TimeoutExpired:  # the pipeline writes a group's records when the group ends: nothing to count
        out["transformers_serve"] = {"cut_after_s": args.tserve_timeout}
    return out


def long_prompts(tokenizer, lengths: list[int]) -> list[list[int]]:
    """Token ids of long prompts: a book's text cut to `n` tokens, then an instruction."""
    book = (sample_corpus_dir() / "prideprejudice.txt").read_text()
    ids = tokenizer(book, add_special_tokens=False)["input_ids"]
    tail = tokenizer("\n\nWho is the author of the text above?", add_special_tokens=False)["input_ids"]
    return [ids[:n - len(tail)] + tail for n in lengths]


def step_abf_long(args, run: Run, abf: Server, abf_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(abf_dir)
    prompts = long_prompts(tokenizer, args.long_lengths)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(abf_dir, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                                 attn_implementation="sdpa").to(device).eval()
    out = {"lengths": args.long_lengths, "new_tokens": args.long_new_tokens, "cases": []}
    for ids in prompts:
        with torch.inference_mode():
            gen = model.generate(torch.tensor([ids], device=device), max_new_tokens=args.long_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.eos_token_id)
        hf_ids = [t for t in gen[0, len(ids):].tolist() if t != tokenizer.eos_token_id]
        reply = http_json(abf.url + "/v1/completions", {"model": SERVED_NAME, "prompt": ids, "temperature": 0,
                                                         "max_tokens": args.long_new_tokens,
                                                         "return_token_ids": True}, timeout=120)
        choice = reply["choices"][0]
        v_ids = [t for t in choice["token_ids"] if t != tokenizer.eos_token_id] if choice.get("token_ids") else None
        v_text, hf_text = choice["text"], tokenizer.decode(hf_ids, skip_special_tokens=True)
        first_diff = next((i for i, (x, y) in enumerate(zip(hf_ids, v_ids or [])) if x != y), None)
        out["cases"].append({"prompt_tokens": len(ids), "vllm_prompt_tokens": reply.get("usage", {}).get(
            "prompt_tokens"), "identical_text": v_text.strip() == hf_text.strip(), "identical_ids": v_ids == hf_ids
            if v_ids is not None else None, "first_diff_token": first_diff, "transformers": hf_text[:160],
            "vllm": v_text[:160]})
        run.results["steps"]["abf_long"] = out
        run.save()
    del model
    return out


def step_eval(args, run: Run, engine: str, abf_dir: Path, data: Path, work: Path, **extra) -> dict:
    out_dir = work / f"eval_{engine}"
    cmd = [sys.executable, *CLI, "eval", "--task", "factory-qa", "--data", str(data), "--output", str(out_dir),
           "--lengths", ",".join(map(str, args.eval_lengths)), "--num-samples", str(args.eval_samples),
           "--engine", engine, "--model", str(extra.pop("model", abf_dir)), "--tokenizer", str(abf_dir)]
    cmd += cli_flags(extra)
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    res = out_dir / "results.json"
    if not res.exists():
        raise RuntimeError(f"eval exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")
    data_out = json.loads(res.read_text())
    return {"wall_s": round(time.monotonic() - t0, 1), "exit": done.returncode,
            "results": {k: data_out[k] for k in data_out if k not in ("records",)}}


def write_report(run: Run) -> None:
    """The headline figures as markdown (benchmarks/results/vllm_gpu.md is written from this)."""
    r, s = run.results, run.results["steps"]
    lines = [f"# vLLM on the GPU machine ({r['machine'].get('gpu')}, vllm {r['machine'].get('vllm')}, torch "
             f"{r['machine'].get('torch')}, transformers {r['machine'].get('transformers')})", ""]
    srv = s.get("servers") or {}
    lines.append("Servers ready after: " + ", ".join(f"{k} {v.get('ready_s', 'ERROR')} s" for k, v in srv.items()
                                                if isinstance(v, dict)))
    c = s.get("ceiling") or {}
    if c.get("factory"):
        lines += ["", f"## Ceiling: {c.get('chunks')} chunks, concurrency {c.get('concurrency')}, max_new_tokens "
                  f"{c.get('max_new_tokens')}, greedy", "",
                  "| run | req/s | output tok/s | requests | running (mean) |", "| --- | --- | --- | --- | --- |"]
        for i, f in enumerate(c["factory"]):
            g = (f.get("vllm_gauges") or {}).get("num_requests_running", {})
            lines.append(f"| factory {i} | {f.get('requests_per_s')} | {f.get('output_tokens_per_s')} | "
                         f"{f.get('requests')} | {g.get('mean_while_busy')} |")
        for i, b in enumerate(c.get("bench", [])):
            g = (b.get("vllm_gauges") or {}).get("num_requests_running", {})
            lines.append(f"| vllm bench serve {i} | {b.get('request_throughput') and round(b['request_throughput'], 2)}"
                         f" | {b.get('output_throughput') and round(b['output_throughput'], 1)} | {b.get('completed')}"
                         f" | {g.get('mean_while_busy')} |")
        if c.get("ratio_factory_over_bench"):
            lines += ["", f"Ratio factory / bench: {c['ratio_factory_over_bench']}"]
    g = s.get("guided") or {}
    if g:
        lines += ["", "## Guided decoding (sampled T=0.7, self-critique filter)", "",
                  "| guided | QA | accepted | rate | req/s | reasons |", "| --- | --- | --- | --- | --- | --- |"]
        for k, v in g.items():
            if isinstance(v, dict) and "qa" in v:
                lines.append(f"| {k} | {v['qa']} | {v['accepted']} | {v['acceptance_rate']} | {v['requests_per_s']} | "
                             f"{v['rejection_reasons']} |")
    for name in ("inprocess", "tserve", "abf_long", "eval_openai", "eval_vllm"):
        if name in s:
            lines += ["", f"## {name}", "", "```", json.dumps(s[name], default=str)[:3000], "```"]
    if r["skipped"]:
        lines += ["", f"Skipped: {r['skipped']}"]
    (run.out / "vllm_gpu.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the embedded model's HF folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/vllm_gpu_work"))
    ap.add_argument("--time-budget", type=float, default=540)
    ap.add_argument("--chunk-tokens", type=int, default=512)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--startup-timeout", type=float, default=240)
    ap.add_argument("--tserve-timeout", type=float, default=120)
    ap.add_argument("--tserve-chunks", type=int, default=128, help="chunks for the transformers serve comparison "
                    "(it did 4.1 req/s on an H200 before)")
    ap.add_argument("--inprocess-util", type=float, default=0.15)
    ap.add_argument("--long-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[8192, 16384, 31000])
    ap.add_argument("--long-new-tokens", type=int, default=32)
    ap.add_argument("--eval-lengths", type=lambda s: [int(x) for x in s.split(",")], default=[4096, 8192, 16384, 32768])
    ap.add_argument("--eval-samples", type=int, default=10)
    ap.add_argument("--steps", default="ceiling,guided,inprocess,tserve,abf_long,eval_openai,eval_vllm")
    ap.add_argument("--smoke", action="store_true", help="CPU: FaultInjectingServer instead of vllm serve")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    run = Run(args.out, args.time_budget)
    steps = set(args.steps.split(","))
    run.results["settings"] = {k: str(v) for k, v in vars(args).items()}
    corpus = sorted(sample_corpus_dir().glob("*.txt"))
    abf_dir = args.work / "abf-32k"
    done = subprocess.run([sys.executable, *CLI, "pretrain", "apply-rope", "--model", str(args.model),
                           "--variant", "abf", "--seq-len", "32768", "--output", str(abf_dir)],
                          capture_output=True, text=True)
    run.results["abf_checkpoint"] = done.stdout[-800:] if done.returncode == 0 else done.stderr[-800:]
    logs = args.out
    ts_cmd = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; "
              "sys.argv[0] = 'transformers'; sys.exit(main())", "serve", "--host", "127.0.0.1", "--port", "8102",
              "--device", "cuda" if not args.smoke else "cpu", "--continuous-batching",
              *(("--cb-max-memory-percent", "0.1") if not args.smoke else ("--cb-num-blocks", "64")), str(args.model)]
    if args.smoke:
        fake = [sys.executable, "-m", "datafactory.testing.fault_server", "--delay-ms", "50", "--model", SERVED_NAME,
                "--owned-by", "vllm"]
        servers = {"E": Server("E", fake + ["--port", "8100"], 8100, logs / "server_E.log"),
                   "ABF": Server("ABF", fake + ["--port", "8101"], 8101, logs / "server_ABF.log")}
    else:
        env = {"VLLM_SERVER_DEV_MODE": "1"}  # POST /reset_prefix_cache between measured runs
        servers = {"E": Server("E", vllm_serve_cmd(args.model, 8100, 4096, 16), 8100, logs / "server_E.log", env),
                   "ABF": Server("ABF", vllm_serve_cmd(abf_dir, 8101, 32768, 8), 8101, logs / "server_ABF.log",
                                 env)}
    servers["TS"] = Server("TS", ts_cmd, 8102, args.work / "server_TS.log")
    e, abf, ts = servers["E"], servers["ABF"], servers["TS"]
    needed = {"E"} | ({"ABF"} if steps & {"abf_long", "eval_openai"} else set()) | ({"TS"} if "tserve" in steps else set())
    try:
        run.step("servers", 60, step_servers, args, run, {k: v for k, v in servers.items() if k in needed})
        if "ceiling" in steps:
            run.step("ceiling", 60, step_ceiling, args, run, e, corpus, args.work)
        if "guided" in steps:
            run.step("guided", 50, step_guided, args, run, e, corpus, args.work)
        if "inprocess" in steps and not args.smoke:
            run.step("inprocess", 90, step_inprocess, args, run, corpus, args.work)
        if "tserve" in steps:
            run.step("tserve", args.tserve_timeout + 30, step_tserve, args, run, ts, e, args.work)
        if "abf_long" in steps:
            run.step("abf_long", 40, step_abf_long, args, run, abf, abf_dir)
        data = args.work / "guided_off"
        if "eval_openai" in steps:
            run.step("eval_openai", 45, step_eval, args, run, "openai", abf_dir, data, args.work,
                     base_url=abf.url + "/v1", model=SERVED_NAME, concurrency=args.concurrency)
        if "eval_vllm" in steps and not args.smoke:  # beside the idle servers: none frees memory meanwhile
            run.step("eval_vllm", 70, step_eval, args, run, "vllm", abf_dir, data, args.work,
                     gpu_memory_utilization=0.1, enforce_eager=True, max_model_len=32768)
    finally:
        for server in servers.values():
            server.stop()
        run.results["server_log_errors"] = {n: [ln for ln in s.tail(200000).splitlines()
                                                if re.search(r"Error|error|Traceback", ln)][:15]
                                            for n, s in servers.items()}
        run.save()
    write_report(run)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
