"""The data factory's settings in typed parts: the engine (with vLLM's options), the sampling, the recipe.

`GenerationConfig` is the parts together, flat: it is the one model that the CLI flags, a YAML file and the
API's JSON body spell, and it is stored in every manifest and job record, so its JSON keeps one level (the
parts are its base classes, not sub-objects). Engines are built from an `EngineSettings` (engine + sampling),
which evaluation's config is too, so `longscale eval` reuses these knobs instead of rebuilding a config.
Every number is bounded and finite (a service takes this from clients: `1e999` or `10**9` retries are
refused, not obeyed).

Inputs and output paths are not part of it (the CLI takes them as arguments, the API as uploads or paths
under its data root), so a config describes *how* to generate and can be stored in every manifest.
"""
from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from longscale.common.config import ConfigModel


class BoundedModel(ConfigModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class VLLMOptions(BoundedModel):
    """The in-process vllm engine's options, shared by GenerationConfig and the evaluation's EvalConfig."""

    max_model_len: int | None = Field(None, ge=64, le=10_000_000, description="vllm engine: context length to reserve KV cache "
                                      "for (default: the model's max_position_embeddings)")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm engine: fraction of the GPU's "
                                          "memory vLLM may take (weights + KV cache)")
    tensor_parallel_size: int = Field(1, ge=1, le=64, description="vllm engine: GPUs to shard the model over")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="vllm engine: weight and activation dtype (auto: the checkpoint's, fp32 -> bf16)")
    enforce_eager: bool = Field(False, description="vllm engine: no CUDA graphs or torch.compile (starts in "
                                "seconds; decoding of small models is slower)")
    kv_cache_memory_bytes: int | None = Field(None, ge=2**20, le=2**44, description="vllm engine: KV cache size in "
                                              "bytes, instead of sizing it from the memory free while vLLM profiles "
                                              "(an engine sharing its GPU with other processes can see almost none)")

    def vllm_kwargs(self) -> dict:
        return {name: getattr(self, name) for name in VLLMOptions.model_fields}


class EngineConfig(VLLMOptions):
    """Which engine generates, and how it is reached."""

    engine: Literal["transformers", "openai", "vllm"] = Field(
        "transformers", description="transformers (in-process, embedded default), openai (any OpenAI-compatible "
        "server: vllm serve, transformers serve), vllm (in-process vllm.LLM)")
    model: str | None = Field(None, description="local HF model directory, or the served model's name with "
                              "--engine openai; empty = the embedded SmolLM2-135M-Instruct")
    tokenizer: str | None = Field(None, description="the model's tokenizer, to count tokens (default: the model's, "
                                  "when it is a local directory)")
    base_url: str | None = Field(None, description="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    api_key: str | None = Field(None, description="API key for --engine openai (also read from OPENAI_API_KEY)")
    concurrency: int = Field(64, ge=1, le=4096, description="requests in flight (openai engine)")
    request_timeout: float = Field(120.0, gt=0, le=24 * 3600, description="seconds per request before it is retried")
    max_retries: int = Field(5, ge=0, le=100, description="retries per request on 429, 5xx, timeouts, connection errors")
    batch_size: int = Field(8, ge=1, le=4096, description="prompts per forward batch (transformers engine)")

    @model_validator(mode="after")
    def _openai_needs_url(self) -> EngineConfig:
        if self.engine == "openai" and not self.base_url:
            raise ValueError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        return self


class SamplingConfig(BoundedModel):
    """How each answer is sampled."""

    max_new_tokens: int = Field(384, ge=1, le=1_000_000, description="generation budget per request")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="nucleus sampling")
    repetition_penalty: float = Field(1.0, ge=1.0, le=2.0, description="penalise repeated tokens (1.0 = off); "
                                      "small models loop without it. The openai engine sends it as vLLM's "
                                      "extra sampling parameter")
    seed: int = Field(0, ge=-(2**63), le=2**63 - 1, description="seed for chunk choice, prompt mix and sampling")


class EngineSettings(SamplingConfig, EngineConfig):
    """What an engine is built from (datafactory.engines.build_engine): the engine and its sampling."""


class RecipeConfig(BoundedModel):
    """The data recipe: which documents, how they are chunked and prompted, how instances are built."""

    target_tokenizer: str | None = Field(None, description="tokenizer of the model to be finetuned, used to fit "
                                         "--max-context (default: --tokenizer)")
    text_field: str = Field("text", description="JSONL/Parquet/datasets field holding the document text")
    id_field: str = Field("id", description="field holding the document id (default: derived from the text)")
    min_doc_tokens: int = Field(4096, ge=0, le=10_000_000, description="skip documents shorter than this many tokens")

    chunk_tokens: int = Field(3000, ge=64, le=1_000_000, description="tokens per chunk shown to the chat model")
    chunks_per_doc: int | Literal["all"] = Field(1, description="chunks picked per document at random "
                                                 "(seeded); 'all' takes every chunk")
    short_ratio: float = Field(0.5, ge=0.0, le=1.0, description="probability of the short-answer prompt")
    prompt_mode: Literal["auto", "zero-shot", "demonstration"] = Field(
        "auto", description="zero-shot = the paper's prompts; demonstration = one worked example first (for "
        "small models); auto = demonstration for the embedded model only")
    critique: Literal["filter", "off"] = Field("filter", description="self-critique: keep only pairs the model "
                                               "verifies (filter) or keep all (off)")
    max_context: int = Field(16384, ge=256, le=10_000_000, description="token budget of a long training instance "
                             "(target tokenizer), the document truncated to fit")
    guided: Literal["off", "xml"] = Field("off", description="guided decoding: xml constrains the QA reply to "
                                          "<question>..</question>\\n<answer>..</answer> and the critique to "
                                          "<verdict>yes|no</verdict>\\n<reason>..</reason> (vLLM structured outputs: "
                                          "--engine vllm, or --engine openai against vllm serve)")

    @field_validator("critique", "guided", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object, info) -> object:
        """YAML reads an unquoted `critique: off` / `guided: off` as false (and `on` as true)."""
        on = {"critique": "filter", "guided": "xml"}[info.field_name]
        return {False: "off", True: on}.get(value, value) if isinstance(value, bool) else value

    @field_validator("chunks_per_doc", mode="before")
    @classmethod
    def _parse_chunks_per_doc(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() != "all":
            try:
                return int(value)
            except ValueError:
                raise ValueError("must be a positive integer or 'all'") from None
        return value

    @field_validator("chunks_per_doc")
    @classmethod
    def _positive_chunks(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 1_000_000:
            raise ValueError("must be between 1 and 1000000 (or 'all')")
        return value

    @model_validator(mode="after")
    def _chunk_fits(self) -> RecipeConfig:
        if self.chunk_tokens >= self.max_context:
            raise ValueError(f"chunk_tokens ({self.chunk_tokens}) must be smaller than max_context "
                             f"({self.max_context}): the source chunk must fit in the long instance")
        return self


class GenerationConfig(RecipeConfig, EngineSettings):
    """Everything `longscale generate`, a job and a manifest hold (engine + sampling + recipe, flat)."""

    @model_validator(mode="after")
    def _guided_needs_vllm(self) -> GenerationConfig:
        if self.guided != "off" and self.engine == "transformers":
            raise ValueError("--guided xml needs vLLM's structured outputs (--engine vllm, or --engine openai against "
                             "vllm serve); the transformers engine cannot constrain decoding: use --guided off")
        return self

    def public_dict(self) -> dict:
        """The config as stored in manifests and job records: the API key never leaves the process."""
        data = self.model_dump(mode="json")
        if data.get("api_key"):
            data["api_key"] = "***"
        return data
