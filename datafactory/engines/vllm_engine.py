"""The `vllm` engine: in-process `vllm.LLM(...).chat(...)`, for a GPU host with vllm installed.

Deliberately thin: vLLM already batches, schedules and applies the chat template, so this only maps
SamplingParams across and RequestOutputs back. It runs the blocking call in a worker thread so that
`agenerate` is a real coroutine. vllm cannot be installed on the development machines (its wheel pins
another torch), so there this engine only says so; `--engine openai` against `vllm serve` is the
production path that is tested here.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from datafactory.engines import EngineError
from datafactory.engines.base import ChatMessages, EngineResult, SamplingParams

if TYPE_CHECKING:
    from datafactory.config import GenerationConfig


def to_result(output: Any) -> EngineResult:
    """One vllm RequestOutput -> EngineResult (first completion)."""
    completion = output.outputs[0]
    return EngineResult(text=completion.text, finish_reason=completion.finish_reason,
                        usage={"prompt_tokens": len(output.prompt_token_ids or []),
                               "completion_tokens": len(completion.token_ids)})


class VLLMEngine:
    name = "vllm"

    def __init__(self, model: str, *, seed: int = 0, **llm_kwargs: Any) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise EngineError("--engine vllm needs vllm installed (a CUDA host: pip install 'longscale[gpu]'); "
                              "here, run `vllm serve MODEL` elsewhere and use --engine openai --base-url URL") from exc
        self._vllm = vllm
        self.model_name = model
        try:
            self.llm = vllm.LLM(model=model, seed=seed, **llm_kwargs)
        except Exception as exc:
            raise EngineError(f"vllm could not load {model!r}: {exc}") from exc

    @classmethod
    def from_config(cls, config: "GenerationConfig") -> "VLLMEngine":
        from datafactory.engines.transformers_engine import resolve_model_dir

        return cls(str(resolve_model_dir(config.model)), seed=config.seed)

    async def agenerate(self, conversations: list[ChatMessages], params: SamplingParams) -> list[EngineResult]:
        sampling = self._vllm.SamplingParams(max_tokens=params.max_new_tokens, temperature=params.temperature,
                                             top_p=params.top_p, seed=params.seed, stop=list(params.stop) or None)
        try:
            outputs = await asyncio.to_thread(self.llm.chat, conversations, sampling_params=sampling, use_tqdm=False)
        except Exception as exc:  # never raise per request: the whole batch carries the error
            return [EngineResult(text=None, error=f"generation_error: {type(exc).__name__}: {exc}")
                    for _ in conversations]
        return [to_result(o) for o in outputs]

    def close(self) -> None:
        self.llm = None
