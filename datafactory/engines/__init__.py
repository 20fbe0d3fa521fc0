"""Generation engines behind one interface (see base.py); `build_engine` picks one from an EngineSettings.

Engine modules are imported lazily so that `--engine openai` never loads torch and `--engine vllm` is
the only path that touches vllm.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from datafactory.engines.base import ChatMessages, Engine, EngineResult, SamplingParams, generate_sync
from longscale.common.errors import LongscaleError

if TYPE_CHECKING:
    from datafactory.config import EngineSettings, SamplingConfig

__all__ = ["ChatMessages", "Engine", "EngineError", "EngineResult", "SamplingParams", "build_engine",
           "generate_sync", "sampling_params_from_config"]


class EngineError(LongscaleError, RuntimeError):
    """An engine could not be built (bad model path, vllm missing, server unreachable); says what to fix."""


def sampling_params_from_config(config: SamplingConfig, **overrides: Any) -> SamplingParams:
    """The sampling knobs of a config as SamplingParams (overrides win, e.g. max_new_tokens)."""
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                            seed=config.seed, repetition_penalty=config.repetition_penalty)
    return dataclasses.replace(params, **overrides)


def build_engine(config: EngineSettings) -> Engine:
    """Construct the engine named by `config.engine`; raises EngineError with a fix-it message."""
    if config.engine == "transformers":
        from datafactory.engines.transformers_engine import TransformersEngine

        return TransformersEngine.from_config(config)
    if config.engine == "openai":
        from datafactory.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(config)
    if config.engine == "vllm":
        from datafactory.engines.vllm_engine import VLLMEngine

        return VLLMEngine.from_config(config)
    raise EngineError(f"unknown engine {config.engine!r}: choose transformers, openai or vllm")
