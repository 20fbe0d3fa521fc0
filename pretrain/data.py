"""Pretraining text: weighted sources, up-sampled long documents, EOS-joined fixed-length sequences.

A source is `NAME=PATH:WEIGHT`: PATH is a .jsonl/.parquet/.txt file or a folder of them (JSONL/Parquet
rows give their `text` field; a .txt file is one document). Each epoch lists every document
`weight` times (the fraction as a seeded random subset) and documents of at least `long_doc_tokens`
tokens `long_upsample` times more, then shuffles the list with (seed, epoch). The packer walks that
list, joining documents with EOS and cutting sequences of whatever length the curriculum asks for.
Its whole state is (epoch, index, offset), so a resumed run continues on exactly the next token.
The trade-off: token counts are needed to build the list, so every document is tokenized once up front.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from longscale.common.errors import LongscaleError
from longscale.common.records import iter_records, record_files

if TYPE_CHECKING:  # imported where it runs: the CLI's parser imports this module's curriculum parser
    import torch

TEXT_SUFFIXES = (".jsonl", ".parquet", ".txt")


class DataSourceError(LongscaleError, ValueError):
    """A source spec or file is unusable; the message names it."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    path: Path
    weight: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> "SourceSpec":
        """`NAME=PATH:WEIGHT` (NAME= and :WEIGHT optional)."""
        name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
        location, weight = rest, 1.0
        head, sep, tail = rest.rpartition(":")
        if sep and head:
            try:
                location, weight = head, float(tail)
            except ValueError:
                location = rest
        if weight < 0 or not math.isfinite(weight):
            raise DataSourceError(f"source {spec!r}: weight must be a finite number >= 0")
        path = Path(location).expanduser()
        if not path.exists():
            raise DataSourceError(f"source {spec!r}: {path} does not exist")
        return cls(name or path.stem, path, weight)


def read_text_file(file: Path) -> str:
    """A .txt document; a binary file (NUL bytes, or mostly undecodable) is refused, never trained on."""
    data = file.read_bytes()
    text = data.decode("utf-8", errors="replace")
    if b"\x00" in data[:65536] or text.count("\ufffd") > max(16, len(text) // 100):
        raise DataSourceError(f"{file}: a binary file, not UTF-8 text")
    return text


def read_documents(path: Path) -> list[str]:
    """All documents under `path` (non-empty texts only): .txt files whole, JSONL/Parquet records' 'text'."""
    docs: list[str] = []
    for file in record_files(path, TEXT_SUFFIXES, error=DataSourceError):
        if file.suffix == ".txt":
            docs.append(read_text_file(file))
            continue
        for where, record in iter_records(file, suffixes=TEXT_SUFFIXES, error=DataSourceError):
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise DataSourceError(f"{where}: expected a record with a string 'text' field")
            docs.append(record["text"])
    return [d for d in docs if d and d.strip()]


@dataclass
class PackedStream:
    """Deterministic, resumable stream of EOS-joined token sequences over tokenized documents."""

    docs: list[list[int]]
    weights: list[float]  # per document (source weight)
    eos_id: int
    seed: int = 0
    long_doc_tokens: int = 32768
    long_upsample: float = 1.0
    epoch: int = 0
    index: int = 0
    offset: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not self.docs:
            raise DataSourceError("no documents to train on")
        self._order = self.epoch_order(self.epoch)

    def epoch_order(self, epoch: int) -> list[int]:
        rng = random.Random(f"{self.seed}:{epoch}")
        order: list[int] = []
        for i, doc in enumerate(self.docs):
            times = self.weights[i] * (self.long_upsample if len(doc) >= self.long_doc_tokens else 1.0)
            whole = int(times)
            order += [i] * (whole + (rng.random() < times - whole))
        if not order:
            raise DataSourceError("every source has weight 0: nothing to train on")
        rng.shuffle(order)
        return order

    def next_sequence(self, seq_len: int) -> torch.Tensor:
        """The next `seq_len` tokens (documents joined with EOS), advancing the state."""
        out: list[int] = []
        while len(out) < seq_len:
            if self.index >= len(self._order):
                self.epoch, self.index, self.offset = self.epoch + 1, 0, 0
                self._order = self.epoch_order(self.epoch)
            doc = self.docs[self._order[self.index]] + [self.eos_id]
            take = doc[self.offset: self.offset + seq_len - len(out)]
            out += take
            self.offset += len(take)
            if self.offset >= len(doc):
                self.index, self.offset = self.index + 1, 0
        import torch

        return torch.tensor(out, dtype=torch.long)

    def next_batch(self, batch: int, seq_len: int) -> torch.Tensor:
        import torch

        return torch.stack([self.next_sequence(seq_len) for _ in range(batch)])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise DataSourceError(f"checkpoint was made with data seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.index, self.offset = state["epoch"], state["index"], state["offset"]
        self._order = self.epoch_order(self.epoch)

    @property
    def total_tokens(self) -> int:
        return sum(len(d) + 1 for d in self.docs)


def build_stream(specs: list[str], tokenizer, *, seed: int = 0, long_doc_tokens: int = 32768,
                 long_upsample: float = 1.0, show_progress: bool = True) -> PackedStream:
    """Read and tokenize every source, and return the packer over them."""
    from longscale.common.progress import progress as progress_bar

    if not specs:
        raise DataSourceError("give at least one --source NAME=PATH:WEIGHT")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataSourceError("the tokenizer has no EOS token to join documents with")
    docs, weights = [], []
    for spec in map(SourceSpec.parse, specs):
        texts = read_documents(spec.path)
        for text in progress_bar(texts, desc=f"tokenizing {spec.name}", disable=not show_progress, unit="doc"):
            docs.append(tokenizer(text, add_special_tokens=False)["input_ids"])
            weights.append(spec.weight)
    return PackedStream(docs, weights, eos, seed=seed, long_doc_tokens=long_doc_tokens, long_upsample=long_upsample)


def parse_curriculum(spec: str | None, seq_len: int) -> list[tuple[int, float]]:
    """`4096:0.2,32768` -> [(4096, 0.2), (32768, 1.0)]: each length until that fraction of the tokens."""
    if not spec:
        return [(seq_len, 1.0)]
    stages: list[tuple[int, float]] = []
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    for n, part in enumerate(parts):
        length, _, frac = part.partition(":")
        try:
            stage = (int(length), float(frac) if frac else 1.0)
        except ValueError as exc:
            raise ValueError(f"curriculum stage {part!r} is not LENGTH[:FRACTION]") from exc
        if n == len(parts) - 1 and frac and stage[1] != 1.0:
            raise ValueError("the last curriculum stage runs to the end: write it without a fraction")
        if stages and stage[1] <= stages[-1][1]:
            raise ValueError(f"curriculum fractions must increase: {spec!r}")
        stages.append(stage)
    stages[-1] = (stages[-1][0], 1.0)
    return stages


def seq_len_at(stages: list[tuple[int, float]], tokens_done: int, total_tokens: int) -> int:
    for length, until in stages:
        if tokens_done < until * total_tokens:
            return length
    return stages[-1][0]
