"""Where a document's chunks are, and how much of it to tokenize: a character pass, then one region.

With `chunks_per_doc` = k, a character pass lays the document out in slots of `SLOT_CHARS_PER_TOKEN *
chunk_tokens` characters; the seeded choice picks k slots (a short tail slot only when nothing else is left)
and each chosen chunk begins at the first paragraph (else sentence) start in its slot's first quarter. Then
one region around the chosen chunks is tokenized, reaching `need = max(max_context, min_doc_tokens) +
MARGIN_TOKENS` tokens before the first chunk and `chunk_tokens + need` after the last one's start (or the
document's edges). That region decides what the whole encoding would: each chunk's cut, whether the
document has `min_doc_tokens` (a region short of an edge holds more than that), and -- tokenized with the
target tokenizer too when it differs -- the instance window (instances.fit_window). A book costs about
2 * max_context tokens instead of all of them; a document shorter than that is tokenized whole, once.
`chunks_per_doc="all"` tokenizes the whole document (every chunk is shown to the model anyway).
Where a tokenizer's counts can be had exactly by words (word_tokens.py: byte-level BPE such as SmolLM2's),
the whole document is counted that way instead, ~3x cheaper than encoding even a region of a 30 KB one,
and the region logic below is not needed (token positions are then the document's own).

The trade-offs: token positions are unknown (null in the records) when the region does not start at the
document's start; the slot width is a fixed guess of characters per token, so a text far denser in tokens
than English gets chunks that start further apart than `chunk_tokens` (they are still within budget, cut
on its tokens); and the region equals the whole encoding only where tokenization is local (a token never
depends on text MARGIN_TOKENS tokens away), true of pre-tokenizing BPE and SentencePiece tokenizers. Regions
begin at line starts and end at whitespace; a test compares regions with whole encodings on the sample books.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any

from datafactory.chunking import (
    PARAGRAPH_BREAK,
    SENTENCE_END,
    Chunk,
    TokenizedText,
    choose_chunks,
    chunk_document,
    cut_chunk,
    tokenize_region,
)
from datafactory.config import GenerationConfig
from datafactory.word_tokens import WordCounter

SLOT_CHARS_PER_TOKEN = 4.0   # English prose runs 4-4.5 characters per token; used for layout and sizing only
REGION_CHARS_PER_TOKEN = 4.6  # first guess of a region's size: a little over prose's rate (few re-tokenizations)
MARGIN_TOKENS = 32           # tokens a region keeps beyond what it must decide (edge effects of the cut)
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class PlanSettings:
    chunk_tokens: int
    chunks_per_doc: int | str
    seed: int
    min_doc_tokens: int
    max_context: int

    @classmethod
    def from_config(cls, config: GenerationConfig) -> "PlanSettings":
        return cls(config.chunk_tokens, config.chunks_per_doc, config.seed, config.min_doc_tokens, config.max_context)


@dataclass
class DocPlan:
    chunks: list[Chunk]
    too_short: bool
    n_tokens: int | None        # the document's generator tokens; None when only a region was tokenized
    target: TokenizedText | None  # the target tokenizer's encoding of the region (for the instances)
    tokenized_chars: int = 0     # characters tokenized to make this plan (all tokenizers)


def chosen_slots(n_chars: int, settings: PlanSettings, doc_id: str) -> list[int]:
    """The seeded choice of `chunks_per_doc` slots of the character layout, in document order."""
    slot = settings.chunk_tokens * SLOT_CHARS_PER_TOKEN
    n_slots = max(1, math.ceil(n_chars / slot))
    candidates = list(range(n_slots))
    if n_slots > 1 and n_chars - (n_slots - 1) * slot < slot / 4:
        candidates.pop()  # a short tail rarely holds enough for a question
    k = min(int(settings.chunks_per_doc), len(candidates))
    return sorted(random.Random(f"chunks:{settings.seed}:{doc_id}").sample(candidates, k))


def slot_start_char(text: str, slot_index: int, chunk_tokens: int) -> int:
    """Where slot `slot_index`'s chunk begins: the first paragraph (else sentence, else word) start within the
    slot's first quarter."""
    if slot_index == 0:
        return 0
    slot = chunk_tokens * SLOT_CHARS_PER_TOKEN
    anchor = int(slot_index * slot)
    hi = min(len(text), anchor + int(slot / 4))
    match = PARAGRAPH_BREAK.search(text, anchor, hi) or SENTENCE_END.search(text, anchor, hi) \
        or _WHITESPACE.search(text, anchor, hi)
    pos = match.end() if match else anchor
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return min(pos, len(text))


def _line_start_at_or_before(text: str, pos: int) -> int:
    if pos <= 0:
        return 0
    return text.rfind("\n", 0, pos) + 1


def _whitespace_at_or_after(text: str, pos: int) -> int:
    if pos >= len(text):
        return len(text)
    match = _WHITESPACE.search(text, pos)
    return match.start() if match else len(text)


def _reaches(region: TokenizedText, first_char: int, last_char: int, before: int, after: int) -> tuple[bool, bool]:
    """Whether the region holds `before` tokens before first_char (or starts the document) and `after`
    tokens from last_char on (or ends it)."""
    left = region.covers_start or region.first_token_at(first_char) >= before
    right = region.covers_end or region.n_tokens - region.first_token_at(last_char) >= after
    return left, right


def _encode(text: str, lo: int, hi: int, backend: Any, words: bool) -> TokenizedText:
    """text[lo:hi] counted by words where that is exact (word_tokens.py), else encoded by the tokenizer."""
    counter = WordCounter.for_backend(backend) if words else None
    counted = counter.tokenize(text, lo, hi) if counter is not None else None
    return counted if counted is not None else tokenize_region(text, lo, hi, backend)


def plan_tokens(text: str, doc_id: str, generator: Any, target: Any, settings: PlanSettings,
                whole: bool = False, words: bool = True) -> DocPlan:
    """Chunks and the target encoding of one document; `generator`/`target` are `tokenizers.Tokenizer`s (the
    same object when the target tokenizer is the generator's). `whole` tokenizes the whole document: the
    reference the windowed plan must equal. `words` counts tokens by words where that is exact (the whole
    document then, as it costs less than a region's encoding); False always runs the tokenizer."""
    min_tokens = max(1, settings.min_doc_tokens)
    whole = whole or (words and WordCounter.for_backend(generator) is not None)
    if settings.chunks_per_doc == "all":
        full = _encode(text, 0, len(text), generator, words)
        chunks = choose_chunks(chunk_document(full, settings.chunk_tokens), "all", settings.seed, doc_id)
        target_doc = full if target is generator else _encode(text, 0, len(text), target, words)
        return DocPlan(chunks, full.n_tokens < min_tokens, full.n_tokens, target_doc,
                       len(text) * (1 if target is generator else 2))
    slots = chosen_slots(len(text), settings, doc_id)
    starts = [slot_start_char(text, s, settings.chunk_tokens) for s in slots]
    need = max(settings.max_context, settings.min_doc_tokens) + MARGIN_TOKENS
    left_chars = int(need * REGION_CHARS_PER_TOKEN)
    right_chars = int((settings.chunk_tokens + need) * REGION_CHARS_PER_TOKEN)
    tokenized_chars = 0
    while True:
        lo = 0 if whole else _line_start_at_or_before(text, starts[0] - left_chars)
        hi = len(text) if whole else _whitespace_at_or_after(text, starts[-1] + right_chars)
        region = _encode(text, lo, hi, generator, words)
        tokenized_chars += hi - lo
        ok_left, ok_right = _reaches(region, starts[0], starts[-1], need, settings.chunk_tokens + need)
        if ok_left and ok_right:
            break
        left_chars = left_chars if ok_left else int(left_chars * 1.5)
        right_chars = right_chars if ok_right else int(right_chars * 1.5)
    too_short = region.whole and region.n_tokens < min_tokens
    chunks = []
    if not too_short:
        token_starts = [region.first_token_at(c) for c in starts]
        for i, (slot, token_start) in enumerate(zip(slots, token_starts)):
            if token_start >= region.n_tokens or (chunks and token_start < chunks[-1].token_end):
                continue
            room = settings.chunk_tokens
            if i + 1 < len(token_starts):  # never run into the next chosen chunk
                room = min(room, max(1, token_starts[i + 1] - token_start))
            chunks.append(cut_chunk(region, token_start, room, slot))
    target_doc = region
    if target is not generator and chunks:
        target_doc, chars = _target_region(text, region, chunks, target, need, words)
        tokenized_chars += chars
    return DocPlan(chunks, too_short, region.n_tokens if region.whole else None, target_doc, tokenized_chars)


def _target_region(text: str, region: TokenizedText, chunks: list[Chunk], target: Any,
                   need: int, words: bool) -> tuple[TokenizedText, int]:
    """The target tokenizer's encoding of the generator's region, grown until it reaches `need` target
    tokens on each side of the chunks (or the document's edges)."""
    lo, hi, chars = region.char_start, region.char_end, 0
    first, last = chunks[0].char_start, chunks[-1].char_end
    while True:
        encoded = _encode(text, lo, hi, target, words)
        chars += hi - lo
        ok_left, ok_right = _reaches(encoded, first, last, need, need)
        if ok_left and ok_right:
            return encoded, chars
        if not ok_left:
            lo = _line_start_at_or_before(text, lo - (first - lo) - int(need * REGION_CHARS_PER_TOKEN))
        if not ok_right:
            hi = _whitespace_at_or_after(text, hi + (hi - last) + int(need * REGION_CHARS_PER_TOKEN))
