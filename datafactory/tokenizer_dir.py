"""A tokenizer read straight from a model directory (tokenizer.json, tokenizer_config.json, chat_template.jinja):
no transformers import, so a run starts in a fraction of a second instead of the 5-10 CPU-seconds that
importing transformers (and torch) costs on a 2-core machine.

It offers what the factory uses of a tokenizer: `backend_tokenizer` (the `tokenizers.Tokenizer`, for chunking
and counting), `chat_template`, and `apply_chat_template` (only to count an instance's template tokens),
rendered with jinja2 as transformers renders it (sandboxed, trim_blocks and lstrip_blocks, `raise_exception`,
`tojson`, the special tokens as variables). A template this cannot render is handed to transformers' own
tokenizer, loaded then: never a wrong count, at worst the old start-up cost.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _content(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


class DirectoryTokenizer:
    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer

        self.name_or_path = str(directory)
        root = Path(directory)
        self.backend_tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        config_path = root / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        template = config.get("chat_template")
        if (root / "chat_template.jinja").exists():
            template = (root / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = template
        self.special_tokens = {name: _content(config.get(name)) for name in
                               ("bos_token", "eos_token", "unk_token", "pad_token")}
        self._fallback: Any = None  # transformers' tokenizer, loaded only for a template jinja2 here cannot render

    @classmethod
    def usable(cls, directory: str | Path) -> bool:
        return (Path(directory) / "tokenizer.json").is_file()

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        assert self.chat_template is not None  # apply_chat_template checks it first
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                          tools=None, documents=None, **self.special_tokens)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = True,
                            add_generation_prompt: bool = False, **kwargs: Any) -> Any:
        if not self.chat_template:
            raise ValueError(f"{self.name_or_path} has no chat template")
        try:
            text = self._render(messages, add_generation_prompt)
        except Exception:  # a template beyond this renderer: transformers renders it
            if self._fallback is None:
                from transformers import AutoTokenizer

                self._fallback = AutoTokenizer.from_pretrained(self.name_or_path)
            return self._fallback.apply_chat_template(messages, tokenize=tokenize,
                                                      add_generation_prompt=add_generation_prompt, **kwargs)
        if not tokenize:
            return text
        return self.backend_tokenizer.encode(text, add_special_tokens=False).ids
