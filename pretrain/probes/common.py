"""What the probes share: length lists, regex sentences, answer normalisation, model adapters, output files.

Probes talk to a model through two small callables so that a model-free oracle can stand in for it:
`Answerer(prompts: list[list[int]], max_new_tokens) -> list[str]` (greedy continuations, batched) and
`TokenLosses(input_ids: LongTensor[1, T]) -> FloatTensor[T-1]` (next-token loss at each position).
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Callable

import torch

Answerer = Callable[[list[list[int]], int], list[str]]
TokenLosses = Callable[[torch.Tensor], torch.Tensor]

ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "messrs", "esq", "col", "capt", "rev", "jr", "sr", "vs", "no",
                 "mt", "gen", "lt", "sgt", "prof", "hon", "e.g", "i.e", "viz", "cf"}
_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")


def parse_lengths(spec: str | list) -> list[int]:
    """'2k,4k,32768' -> [2048, 4096, 32768] (k = 1024)."""
    items = spec if isinstance(spec, list) else str(spec).split(",")
    out = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        try:
            out.append(int(float(item[:-1]) * 1024) if item.endswith("k") else int(item))
        except ValueError as exc:
            raise ValueError(f"bad length {item!r}: use numbers like 2048 or 2k") from exc
    if not out or min(out) <= 0:
        raise ValueError(f"lengths must be positive: {spec!r}")
    return out


def split_sentences(text: str) -> list[str]:
    """Regex sentence split (no nltk): ends at . ! ? (plus closing quotes) before a capital, skipping abbreviations."""
    text = re.sub(r"\s+", " ", text).strip()
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(text):
        word = text[start:match.start()].rsplit(" ", 1)[-1].lower().strip("\"'“‘(")
        if text[match.start()] == "." and (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        sentences.append(text[start:match.end()].strip())
        start = match.end()
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def normalize(text: str) -> str:
    """Lower case, no punctuation or quotes, single spaces (SQuAD-style normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation + "“”‘’—–"))
    return " ".join(text.split())


def write_result(output: Path, name: str, result: dict) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path


def new_figure(title: str, xlabel: str, ylabel: str, size=(7, 4)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    ax.set_title(title), ax.set_xlabel(xlabel), ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_texts(path: str | Path) -> list[str]:
    """Evaluation texts: a .txt file, a JSONL/Parquet file, or a folder of them (pretrain.data's reader)."""
    from pretrain.data import read_documents

    return read_documents(Path(path))


class HFModel:
    """A transformers causal LM as an Answerer and a TokenLosses (greedy decoding, chunked losses)."""

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
        from transformers import AutoTokenizer

        from pretrain.apply import load_model

        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        torch_dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else torch.float32,
                       "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        self.model = load_model(model_dir, dtype=torch_dtype, attn_implementation="sdpa").to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    @torch.no_grad()
    def answer(self, prompts: list[list[int]], max_new_tokens: int, batch_size: int = 8) -> list[str]:
        """Greedy answers; prompts of one length go together unpadded (no mask: SDPA stays on flash)."""
        answers: dict[int, str] = {}
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_len.setdefault(len(p), []).append(i)
        for idx in by_len.values():
            for s in range(0, len(idx), batch_size):
                part = idx[s:s + batch_size]
                ids = torch.tensor([prompts[i] for i in part], device=self.device)
                out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.eos_token_id)
                for i, row in zip(part, out[:, ids.shape[1]:]):
                    answers[i] = self.tokenizer.decode(row, skip_special_tokens=True)
        return [answers[i] for i in range(len(prompts))]

    @torch.no_grad()
    def token_losses(self, input_ids: torch.Tensor) -> torch.Tensor:
        from pretrain.loss import per_token_losses

        ids = input_ids.to(self.device)
        hidden = self.model.model(input_ids=ids, use_cache=False).last_hidden_state
        return per_token_losses(hidden, self.model.lm_head.weight, ids)[0].float().cpu()
