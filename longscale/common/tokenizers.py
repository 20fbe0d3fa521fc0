"""Load a Hugging Face tokenizer with an error that names the flag it came from (one loader for every package)."""
from __future__ import annotations

from typing import Any

from longscale.common.errors import LongscaleError


class TokenizerLoadError(LongscaleError, ValueError):
    """A tokenizer could not be found or loaded; the message says which flag to set."""


def load_tokenizer(name: str, *, flag: str = "--tokenizer", error: type[Exception] = TokenizerLoadError,
                   pad_with_eos: bool = False, **kwargs: Any) -> Any:
    """`AutoTokenizer.from_pretrained(name)`; a failure is `error` naming `flag`. `pad_with_eos` gives a tokenizer
    without a pad token the EOS token as pad (what the trainers' collators need)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except Exception as exc:  # transformers raises OSError, ValueError, HFValidationError, ... for a bad name
        first = (str(exc).splitlines() or [""])[0][:200]
        raise error(f"{flag} {name!r}: could not load a tokenizer ({type(exc).__name__}: {first}); pass a local "
                    "tokenizer or model directory") from exc
    if pad_with_eos and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
