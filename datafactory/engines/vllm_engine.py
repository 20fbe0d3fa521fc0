"""The `vllm` engine: in-process `vllm.LLM`, for a CUDA host with vllm installed (0.20.0 ran: docs/engines.md).

vLLM batches and schedules by itself, so this engine only maps SamplingParams across and RequestOutputs back,
and makes sure vLLM sees every prompt at once: `LLM` serves one caller at a time and fills its batch only from
that call's prompts, while the pipeline sends its requests as many concurrent `agenerate` slices. One worker
thread therefore coalesces whatever is queued into a single `LLM.chat` call. The price: a request that arrives
while a batch runs waits for that whole batch (its tail included) before its own starts.

The chat template is the model's own (LLM.chat's default); a model without one is refused at construction.
vLLM's engine core is a child process: a script that builds this engine must do so under
`if __name__ == "__main__":` (the `longscale` CLI does), and a daemonic process (a Celery prefork worker) cannot
start it at all, which gets an EngineError pointing at `vllm serve` + `--engine openai`.
"""
from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from datafactory.engines import EngineError
from datafactory.engines.base import ChatMessages, EngineResult, SamplingParams

if TYPE_CHECKING:
    from datafactory.config import EngineSettings

COLLECT_S = 0.005  # after the first queued call, keep collecting until the queue was empty this long


def to_vllm_sampling(vllm: Any, params: SamplingParams) -> Any:
    """Our SamplingParams as vllm.SamplingParams, every field mapped (tests check that none is dropped)."""
    structured = None
    if params.guided_regex is not None:
        structured = importlib.import_module("vllm.sampling_params").StructuredOutputsParams(regex=params.guided_regex)
    return vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature, top_p=params.top_p,
                               seed=params.seed, repetition_penalty=params.repetition_penalty,
                               stop=list(params.stop) or None, structured_outputs=structured)


def to_result(output: Any) -> EngineResult:
    """One vllm RequestOutput -> EngineResult (first completion)."""
    completion = output.outputs[0]
    return EngineResult(text=completion.text, finish_reason=completion.finish_reason,
                        usage={"prompt_tokens": len(output.prompt_token_ids or []),
                               "completion_tokens": len(completion.token_ids)})


def llm_kwargs_from_config(config: EngineSettings) -> dict[str, Any]:
    """The engine options of a GenerationConfig / EvalConfig as vllm.LLM keyword arguments."""
    kwargs = {k: v for k, v in config.vllm_kwargs().items() if v is not None}  # no max_model_len: the model's
    return dict(seed=config.seed, structured_outputs_config={"backend": "xgrammar"}, **kwargs)


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: str, **llm_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise EngineError("--engine vllm needs vllm installed (a CUDA host: pip install 'longscale[gpu]'); "
                              "here, run `vllm serve MODEL` elsewhere and use --engine openai --base-url URL") from exc
        if multiprocessing.current_process().daemon:
            raise EngineError("--engine vllm cannot start vLLM's engine process from a daemonic process (a Celery "
                              "prefork worker): run `vllm serve MODEL` and use --engine openai --base-url URL")
        self._vllm = vllm
        self.model_name = model
        try:
            self.llm = vllm.LLM(model=model, **llm_kwargs)
        except Exception as exc:
            hint = (" (a script that builds the vllm engine must do so under `if __name__ == \"__main__\":`: vLLM "
                    "starts its engine core as a child process)") if "bootstrapping phase" in str(exc) else ""
            raise EngineError(f"vllm could not load {model!r}: {exc}{hint}") from exc
        if getattr(self.llm.get_tokenizer(), "chat_template", None) is None:
            raise EngineError(f"{model} has no chat template: the vllm engine needs a chat model")
        self._queue: queue.Queue[tuple[list[ChatMessages], Any, Future] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="vllm-engine", daemon=True)
        self._worker.start()

    @classmethod
    def from_config(cls, config: EngineSettings) -> "VLLMEngine":
        from datafactory.engines.transformers_engine import resolve_model_dir

        return cls(str(resolve_model_dir(config.model)), **llm_kwargs_from_config(config))

    async def agenerate(self, conversations: list[ChatMessages], params: SamplingParams) -> list[EngineResult]:
        if not conversations:
            return []
        future: Future = Future()
        self._queue.put((conversations, to_vllm_sampling(self._vllm, params), future))
        return await asyncio.wrap_future(future)

    # -- the worker thread: everything queued goes to vLLM as one call ---------------------------------------
    def _collect(self, first: tuple[list[ChatMessages], Any, Future]) -> list[tuple[list[ChatMessages], Any, Future]]:
        calls = [first]
        while True:
            try:
                call = self._queue.get(timeout=COLLECT_S)
            except queue.Empty:
                return calls
            if call is None:
                self._queue.put(None)  # close() again after this batch
                return calls
            calls.append(call)

    def _serve(self) -> None:
        while (first := self._queue.get()) is not None:
            calls = self._collect(first)
            conversations = [c for convs, _, _ in calls for c in convs]
            sampling = [sp for convs, sp, _ in calls for _ in convs]
            try:
                results = self._chat(conversations, sampling)
            except Exception as exc:  # never leave a caller waiting
                results = [EngineResult(text=None, error=f"generation_error: {type(exc).__name__}: {exc}")
                           for _ in conversations]
            start = 0
            for convs, _, future in calls:
                future.set_result(results[start:start + len(convs)])
                start += len(convs)

    def _chat(self, conversations: list[ChatMessages], sampling: list[Any]) -> list[EngineResult]:
        """One LLM.chat over all; if vLLM refuses the batch (it validates every prompt first, e.g. one longer than
        max_model_len), each conversation alone, so only the bad ones carry the error."""
        try:
            return [to_result(o) for o in self.llm.chat(conversations, sampling_params=sampling, use_tqdm=False)]
        except Exception as exc:
            if len(conversations) == 1:
                return [EngineResult(text=None, error=f"generation_error: {type(exc).__name__}: {exc}")]
        return [self._chat([c], [sp])[0] for c, sp in zip(conversations, sampling, strict=True)]

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=60)
        self.llm = None
