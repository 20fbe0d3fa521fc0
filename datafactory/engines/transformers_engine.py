"""In-process batched generation with transformers: the embedded default engine.

Prompts are rendered with the model's own chat template, sorted by length and cut into `batch_size`
batches (left padding, so every row's new tokens start at the same column), generated in a worker thread
so `agenerate` never blocks the event loop. Each batch is seeded from (seed, batch index) inside a forked
RNG, so the same config and prompts give the same texts without touching the caller's global RNG state.
The trade-off: sorting by length saves padding but means a prompt's batch-mates (and so, under sampling,
its exact text) depend on the whole request list, not on the prompt alone.

Cancellation: a cancelled `agenerate` (Ctrl-C under `asyncio.run`) sets its own stop event; the batch on the
model stops at its next token (a stopping criterion) and queued batches return without running, so the
worker threads that `asyncio.run` waits for at exit end within a token, not a whole batch (which took minutes).
"""
from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datafactory.engines import EngineError
from datafactory.engines.base import ChatMessages, EngineResult, SamplingParams

if TYPE_CHECKING:
    from datafactory.config import EngineSettings

log = logging.getLogger(__name__)


def resolve_model_dir(model: str | None) -> Path:
    """The local HF folder to load: the embedded model when `model` is empty, else `model` checked."""
    if not model:
        from datafactory.embedded import ensure_embedded_model

        return ensure_embedded_model()
    path = Path(model).expanduser()
    if not path.exists():
        raise EngineError(f"--model {model!r}: no such directory. The transformers engine needs a local "
                          "Hugging Face model folder (config.json + weights); leave --model empty for the "
                          "embedded SmolLM2-135M-Instruct, or use --engine openai for a served model name")
    if not (path / "config.json").is_file():
        raise EngineError(f"--model {model!r} has no config.json: it is not a Hugging Face model folder")
    return path


class _StopWhenSet:
    """A generate() stopping criterion that ends every row as soon as `event` is set (checked per token)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TransformersEngine:
    """Batched in-process generation; one lock serialises forward passes on the shared model."""

    name = "transformers"

    def __init__(self, model_dir: str | Path, *, batch_size: int = 8, device: str | None = None,
                 dtype: "str | None" = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.model_name = self.model_dir.name
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if self.device == "cuda" else torch.float32)
        try:
            # Any: transformers' own annotations of from_pretrained/.to/decode are looser than their behaviour
            self.tokenizer: Any = AutoTokenizer.from_pretrained(self.model_dir)
            model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch_dtype)
            # transformers 5 annotates PreTrainedModel.to through a decorator that mypy reads as taking a model
            self.model: Any = model.to(self.device)  # type: ignore[arg-type]
        except Exception as exc:
            raise EngineError(f"could not load the model from {self.model_dir}: {exc}") from exc
        if self.tokenizer.chat_template is None:
            raise EngineError(f"{self.model_dir} has no chat template: the transformers engine needs a chat model")
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()
        # prompt lengths are counted on the event loop while a batch is tokenized on a worker thread; a fast
        # tokenizer's padding and truncation are state of its Rust object, which each call sets (a call
        # without padding turns it off under the other thread's padded call: "Unable to create tensor").
        # Counting uses its own copy of the Rust tokenizer, padding and truncation off.
        self._counter = self._own_backend()

    def _own_backend(self) -> Any:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()
        return backend

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens of a rendered prompt (special tokens are in its text), safe beside a batch on a thread."""
        return len(self._counter.encode(prompt, add_special_tokens=False).ids)

    @classmethod
    def from_config(cls, config: EngineSettings) -> "TransformersEngine":
        return cls(resolve_model_dir(config.model), batch_size=config.batch_size)

    # -- generation -------------------------------------------------------------------------------
    async def agenerate(self, conversations: list[ChatMessages], params: SamplingParams) -> list[EngineResult]:
        if params.guided_regex is not None:  # no constrained decoding here; GenerationConfig refuses --guided xml
            return [EngineResult(text=None, error="guided_unsupported: the transformers engine cannot constrain "
                                 "decoding; use --engine vllm or vllm serve for --guided xml")
                    for _ in conversations]
        results: list[EngineResult | None] = [None] * len(conversations)
        prompts: dict[int, str] = {}
        for i, messages in enumerate(conversations):
            try:
                prompts[i] = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:
                results[i] = EngineResult(text=None, error=f"bad_prompt: {exc}")
        lengths = {i: self.prompt_tokens(p) for i, p in prompts.items()}
        for i, n in lengths.items():
            if self.max_positions and n + params.max_new_tokens > self.max_positions:
                results[i] = EngineResult(text=None, error=f"prompt_too_long: {n} prompt + {params.max_new_tokens} "
                                          f"new tokens > the model's {self.max_positions} positions")
        order = sorted((i for i in prompts if results[i] is None), key=lambda i: lengths[i])
        batches = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        stop = threading.Event()  # this call's own: cancelling one caller never stops another's batches
        try:
            for batch_index, batch in enumerate(batches):
                batch_results = await asyncio.to_thread(
                    self._generate_batch, [prompts[i] for i in batch], params, batch_index, stop)
                for i, result in zip(batch, batch_results, strict=True):
                    results[i] = result
        except asyncio.CancelledError:
            stop.set()
            raise
        return results  # type: ignore[return-value]  # every slot is filled above

    def _generate_batch(self, prompts: list[str], params: SamplingParams, batch_index: int,
                        stop: threading.Event | None = None) -> list[EngineResult]:
        import torch
        from transformers import StoppingCriteriaList

        stop = stop or threading.Event()
        try:
            with self._lock, torch.inference_mode(), torch.random.fork_rng(
                    devices=[self.device] if self.device.startswith("cuda") else []):
                if stop.is_set():
                    return [EngineResult(text=None, error="cancelled") for _ in prompts]
                if params.seed is not None:
                    torch.manual_seed(params.seed * 1_000_003 + batch_index)
                enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
                enc = enc.to(self.device)
                sampling = params.temperature > 0
                kwargs = dict(max_new_tokens=params.max_new_tokens, do_sample=sampling,
                              pad_token_id=self.tokenizer.pad_token_id,
                              stopping_criteria=StoppingCriteriaList([_StopWhenSet(stop)]))
                if sampling:
                    kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
                else:
                    kwargs.update(temperature=None, top_p=None, top_k=None)
                if params.repetition_penalty != 1.0:
                    kwargs.update(repetition_penalty=params.repetition_penalty)
                if params.stop:
                    kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
                out = self.model.generate(**enc, **kwargs)
                if stop.is_set():
                    log.info("generation stopped: the request was cancelled mid-batch")
                    return [EngineResult(text=None, error="cancelled") for _ in prompts]
        except Exception as exc:  # one failed batch never loses the rest of the request
            log.exception("transformers generation failed")
            return [EngineResult(text=None, error=f"generation_error: {type(exc).__name__}: {exc}") for _ in prompts]
        new_tokens = out[:, enc["input_ids"].shape[1]:].tolist()
        prompt_counts = enc["attention_mask"].sum(dim=1).tolist()
        return [self._result(row, int(n_prompt), params)
                for row, n_prompt in zip(new_tokens, prompt_counts, strict=True)]

    def _result(self, tokens: list[int], n_prompt: int, params: SamplingParams) -> EngineResult:
        end = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        kept = tokens if end is None else tokens[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        stopped_on_string = any(s in text for s in params.stop)
        for s in params.stop:  # OpenAI semantics: the stop string itself is not returned
            if s in text:
                text = text[:text.index(s)]
        finish = "stop" if end is not None or stopped_on_string or len(tokens) < params.max_new_tokens else "length"
        return EngineResult(text=text, finish_reason=finish,
                            usage={"prompt_tokens": n_prompt, "completion_tokens": len(kept)})

    def close(self) -> None:
        self.model = None
