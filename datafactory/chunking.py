"""Token-aware chunking with the generator's tokenizer.

Each document is tokenized once (a fast tokenizer's `Encoding`); chunk boundaries are found by asking the
encoding for the character span of a handful of tokens (`token_to_chars`), never by materialising the
offsets of every token, so chunking costs little more than the tokenization itself (benchmark (b)).
A chunk holds at most `chunk_tokens` tokens and is cut, in order of preference, after a paragraph break,
after a sentence end, or at a token boundary, never shorter than half the budget (except the last one).

A `TokenizedText` may cover only a region of its document (`planning.py` tokenizes a window around the
chosen chunk instead of the whole book); its character positions are always the document's, its token
indices count from the region's start (the document's own only when the region starts at 0).
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PARAGRAPH_BREAK = re.compile(r"(?<=\S)\s*?\n[ \t\r\f\v]*\n")  # cut where the blank line starts
SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s)")      # cut right after the punctuation


@dataclass(frozen=True)
class Chunk:
    index: int
    token_start: int
    token_end: int
    char_start: int
    char_end: int
    text: str
    absolute: bool = True  # token_start/token_end count from the document's start (else from a region's)

    @property
    def n_tokens(self) -> int:
        return self.token_end - self.token_start

    @property
    def token_span(self) -> tuple[int, int] | None:
        """Token positions in the document; None when it was not tokenized from its start (windowed)."""
        return (self.token_start, self.token_end) if self.absolute else None

    @property
    def char_span(self) -> tuple[int, int]:
        return (self.char_start, self.char_end)


def backend_of(tokenizer: Any):
    """The `tokenizers.Tokenizer` behind a transformers fast tokenizer (or the object itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None and hasattr(tokenizer, "encode_batch"):
        backend = tokenizer
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; chunking needs character offsets "
                        "(load the tokenizer with use_fast=True or pass a tokenizer.json directory)")
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


class TokenizedText:
    """A text (or the region text[char_start:char_end] of it) and its encoding; token positions are looked up
    lazily, from the encoding or from compact offset arrays (`offsets`, relative to the region, as a
    tokenizer process sends them back)."""

    def __init__(self, text: str, encoding: Any = None, *, char_start: int = 0, char_end: int | None = None,
                 offsets: Any = None):
        self.text = text
        self.encoding = encoding
        self.char_start = char_start
        self.char_end = len(text) if char_end is None else char_end
        self._offsets = offsets  # (starts, ends) sequences, or None: ask the encoding
        self.n_tokens = len(encoding) if offsets is None else len(offsets[0])

    @property
    def covers_start(self) -> bool:
        return self.char_start == 0

    @property
    def covers_end(self) -> bool:
        return self.char_end >= len(self.text)

    @property
    def whole(self) -> bool:
        return self.covers_start and self.covers_end

    def _span(self, token: int) -> tuple[int, int] | None:
        if self._offsets is not None:
            return (self._offsets[0][token], self._offsets[1][token]) if self._offsets[1][token] else None
        return self.encoding.token_to_chars(token)

    def start_char(self, token: int) -> int:
        """Character where `token` starts (the region's end past its last token)."""
        if token >= self.n_tokens:
            return self.char_end
        span = self._span(token)
        return span[0] + self.char_start if span else self.start_char(token + 1)

    def end_char(self, token: int) -> int:
        """Character just after `token` (the region's start before its first token)."""
        if token < 0:
            return self.char_start
        span = self._span(token)
        return span[1] + self.char_start if span else self.end_char(token - 1)

    def first_token_at(self, char: int, lo: int = 0, hi: int | None = None) -> int:
        """Index of the first token that starts at or after `char` (binary search in [lo, hi], O(log n))."""
        hi = self.n_tokens if hi is None else hi
        while lo < hi:
            mid = (lo + hi) // 2
            if self.start_char(mid) < char:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def last_token_before(self, char: int, lo: int = 0, hi: int | None = None) -> int:
        """Index just past the last token that ends at or before `char` (binary search in [lo, hi])."""
        hi = self.n_tokens if hi is None else hi
        while lo < hi:
            mid = (lo + hi) // 2
            if self.end_char(mid) <= char:
                lo = mid + 1
            else:
                hi = mid
        return lo


def tokenize_texts(texts: Sequence[str], tokenizer: Any) -> list[TokenizedText]:
    """Tokenize many texts in one batched call (the Rust side runs them in parallel)."""
    encodings = backend_of(tokenizer).encode_batch(list(texts), add_special_tokens=False)
    return [TokenizedText(text, enc) for text, enc in zip(texts, encodings)]


PIECE_CHARS = 4096  # a long string costs more per character to encode than pieces of a few KB (2x at 400 KB)


def piece_cuts(text: str, lo: int, hi: int) -> list[int]:
    """Cut points of text[lo:hi]: lo, then the first line start after each multiple of PIECE_CHARS (counted
    from the document's start, so a region and the whole document are cut at the same places), then hi."""
    cuts = [lo]
    grid = (lo // PIECE_CHARS + 1) * PIECE_CHARS
    while grid < hi:
        newline = text.find("\n", grid, hi)
        if newline < 0 or newline + 1 >= hi:
            break
        cuts.append(newline + 1)
        grid = ((newline + 1) // PIECE_CHARS + 1) * PIECE_CHARS
    cuts.append(hi)
    return cuts


def tokenize_region(text: str, char_start: int, char_end: int, backend: Any) -> TokenizedText:
    """text[char_start:char_end] tokenized in pieces cut at line starts (`backend` is a `tokenizers.Tokenizer`),
    as compact offset arrays. A piece boundary may shift a count by a token against one long encode; the
    instance's SAFETY_TOKENS cover that."""
    from array import array

    cuts = piece_cuts(text, char_start, char_end)
    pieces = [text[a:b] for a, b in zip(cuts, cuts[1:])]
    starts, ends = array("i"), array("i")
    for base, encoding in zip(cuts, backend.encode_batch(pieces, add_special_tokens=False)):
        shift = base - char_start
        offsets = encoding.offsets
        starts.extend([a + shift for a, _ in offsets])
        ends.extend([b + shift for _, b in offsets])
    return TokenizedText(text, char_start=char_start, char_end=char_end, offsets=(starts, ends))


def count_tokens(texts: Sequence[str], tokenizer: Any) -> list[int]:
    """Token counts; a few short texts are encoded one by one (a batch call costs ~0.1 ms of thread dispatch)."""
    backend = backend_of(tokenizer)
    if len(texts) <= 4:
        return [len(backend.encode(text, add_special_tokens=False)) for text in texts]
    return [len(enc) for enc in backend.encode_batch(list(texts), add_special_tokens=False)]


def last_cut(pattern: re.Pattern[str], text: str, lo: int, hi: int, at_start: bool) -> int | None:
    """Position of the last match in text[lo:hi], scanning backwards in growing windows (a boundary is
    usually near the end, so this reads a few hundred characters instead of the whole window)."""
    width = 512
    while True:
        start = max(lo, hi - width)
        last = None
        for match in pattern.finditer(text, start, hi):
            last = match.start() if at_start else match.end()
        if last is not None or start == lo:
            return last
        hi, width = start + 64, width * 4  # overlap the previous window so a boundary across it is found


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def cut_chunk(tokenized: TokenizedText, start: int, chunk_tokens: int, index: int) -> Chunk:
    """The chunk that begins at token `start`: at most `chunk_tokens` tokens, ending after the last paragraph
    break, else sentence end, in its second half, else at the budget."""
    text, n = tokenized.text, tokenized.n_tokens
    limit = min(start + chunk_tokens, n)
    end = limit
    if limit < n:
        lo_char = tokenized.start_char(start + max(1, chunk_tokens // 2))
        hi_char = tokenized.start_char(limit)  # a cut at or before this keeps the chunk within budget
        cut = last_cut(PARAGRAPH_BREAK, text, lo_char, hi_char, at_start=True)
        if cut is None:
            cut = last_cut(SENTENCE_END, text, lo_char, hi_char, at_start=False)
        if cut is not None:
            end = min(limit, max(start + 1, tokenized.first_token_at(cut, start, limit)))
    char_start, char_end = _strip_span(text, tokenized.start_char(start), tokenized.end_char(end - 1))
    return Chunk(index, start, end, char_start, char_end, text[char_start:char_end], tokenized.covers_start)


def chunk_document(tokenized: TokenizedText, chunk_tokens: int) -> list[Chunk]:
    """Split a tokenized document into chunks of at most `chunk_tokens` tokens on natural boundaries."""
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be positive")
    chunks: list[Chunk] = []
    start = 0
    while start < tokenized.n_tokens:
        chunks.append(cut_chunk(tokenized, start, chunk_tokens, len(chunks)))
        start = chunks[-1].token_end
    return chunks


def choose_chunks(chunks: Sequence[Chunk], chunks_per_doc: int | str, seed: int, doc_id: str,
                  chunk_tokens: int | None = None) -> list[Chunk]:
    """Seeded choice of `chunks_per_doc` chunks (or 'all'), in document order.

    A short tail chunk (under a quarter of the budget) is only picked when nothing else is left: it rarely
    holds enough for a question.
    """
    if chunks_per_doc == "all":
        return list(chunks)
    candidates = list(chunks)
    if chunk_tokens and len(candidates) > 1:
        long_enough = [c for c in candidates if c.n_tokens >= chunk_tokens // 4]
        candidates = long_enough or candidates
    k = min(int(chunks_per_doc), len(candidates))
    picked = random.Random(f"chunks:{seed}:{doc_id}").sample(candidates, k)
    return sorted(picked, key=lambda c: c.index)


def choose_answer_type(seed: int, doc_id: str, chunk_index: int, short_ratio: float) -> str:
    """'short' with probability `short_ratio`, else 'normal'; the same inputs always give the same type."""
    draw = random.Random(f"kind:{seed}:{doc_id}:{chunk_index}").random()
    return "short" if draw < short_ratio else "normal"
