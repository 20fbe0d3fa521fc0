"""word_tokens.WORDS over a long ASCII text in numpy: the word ends and each word's token count, without a
Python string or a dictionary look-up per word for most words.

A word ("a whitespace run and the non-whitespace run after it, or a trailing whitespace run") ends where a
non-whitespace byte is followed by a whitespace one, and at the text's end; for ASCII the tokenizer's
whitespace is the six bytes \\t \\n \\v \\f \\r and space. A word of at most KEY_BYTES bytes is its own
uint64 key (its bytes, little-endian, zero-padded: a text holding NUL is not taken here, so no two words
share a key), looked up in an open-addressing hash table probed for every word at once; longer words (~15%
of English prose's) take the string cache of word_tokens.WordCounter. A 30 KB document costs ~0.35 ms
instead of ~1.8 ms by the regex, one dictionary look-up a word and a numpy conversion of their counts.

The trade-off: only ASCII texts without NUL gain (`str.isascii` is a flag of the string, O(1)), and only
long ones (MIN_CHARS: each numpy call costs a few microseconds, more than a short text's regex pass);
every other text, and every tokenizer not counted by words, takes the regex as before. The table holds up
to `limit` words and then restarts, like the string cache. tests/datafactory/test_df_ascii_words.py checks
the ends against the regex and the counts against real encodings.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

KEY_BYTES = 16  # a word of up to 16 bytes is keyed by two uint64 halves (99.9% of English prose's words)
MIN_CHARS = 2048  # shorter texts take the regex: the fixed cost of the numpy calls is larger than its pass
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[list(b"\t\n\x0b\x0c\r ")] = True
# the mask of a half's bytes by how many of the word's bytes it holds (0-8); a word of more than KEY_BYTES
# bytes masks to 0 in both halves (not keyed)
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1, 0], dtype=np.uint64)
_PAD = b"\x00" * KEY_BYTES
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * 2^64/phi
_MIX = np.uint64(0xC2B2AE3D27D4EB4F)
_NO_COUNTS = np.zeros(0, dtype=np.int32)


def takes_fast_path(text: str) -> bool:
    """Whether `ascii_word_counts` applies: long, ASCII (an O(1) flag) and without NUL (a memchr scan)."""
    return len(text) >= MIN_CHARS and text.isascii() and "\x00" not in text


def word_ends(data: np.ndarray) -> np.ndarray:
    """End offsets (int64, exclusive) of WORDS' matches over ASCII bytes: after each non-whitespace byte that
    a whitespace byte follows, and at the end."""
    if not len(data):
        return np.zeros(0, dtype=np.int64)
    space = _IS_SPACE[data]
    ends = np.flatnonzero(space[1:] > space[:-1])
    ends += 1
    return np.append(ends, len(data))


def word_keys(padded: bytes, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each word's key: its first and next 8 bytes as little-endian uint64s (zero-padded), (0, 0) for a word
    longer than KEY_BYTES. `padded` is the text's bytes and KEY_BYTES zero bytes (every start can read 16)."""
    at_every_byte = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    too_long = lengths > KEY_BYTES
    low = at_every_byte[starts]
    low &= _MASKS[np.where(too_long, 9, np.minimum(lengths, 8))]
    high = at_every_byte[starts + 8]
    high &= _MASKS[np.where(too_long, 9, np.clip(lengths - 8, 0, 8))]
    return low, high


class AsciiWordTable:
    """Token counts by word key: a linear-probing hash table (load at most 1/2) in three numpy arrays."""

    def __init__(self, limit: int, bits: int = 14) -> None:
        self.limit, self._initial_bits = limit, bits
        self._reset(bits)

    def _reset(self, bits: int) -> None:
        self.bits, self.size = bits, 1 << bits
        self.low = np.zeros(self.size, dtype=np.uint64)  # 0: an empty slot (a word's first byte is not NUL)
        self.high = np.zeros(self.size, dtype=np.uint64)
        self.counts = np.zeros(self.size, dtype=np.int32)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def _slots(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return (((low ^ (high * _MIX)) * _MULTIPLIER) >> np.uint64(64 - self.bits)).astype(np.intp)

    def lookup(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Counts of the keys (low non-zero), 0 where not in the table; every key probes at once."""
        out = np.zeros(len(low), dtype=np.int32)
        pending, slots = np.arange(len(low)), self._slots(low, high)
        while len(pending):
            found = self.low[slots]
            hit = (found == low) & (self.high[slots] == high)
            out[pending[hit]] = self.counts[slots[hit]]
            go_on = ~hit & (found != 0)
            pending, low, high = pending[go_on], low[go_on], high[go_on]
            slots = (slots[go_on] + 1) & (self.size - 1)
        return out

    def insert(self, low: np.ndarray, high: np.ndarray, counts: np.ndarray) -> None:
        """Add distinct keys not in the table; it restarts when `limit` would be passed, grows at half full."""
        if self.n + len(low) > self.limit:
            self._reset(self._initial_bits)
        if 2 * (self.n + len(low)) > self.size:
            old = self.low, self.high, self.counts
            bits = self.bits
            while 2 * (self.n + len(low)) > 1 << bits:
                bits += 1
            n = self.n
            self._reset(bits)
            kept = old[0] != 0
            self._place(old[0][kept], old[1][kept], old[2][kept])
            assert self.n == n
        self._place(low, high, counts)

    def _place(self, low: np.ndarray, high: np.ndarray, counts: np.ndarray) -> None:
        pending, slots = np.arange(len(low)), self._slots(low, high)
        while len(pending):
            empty = np.flatnonzero(self.low[slots] == 0)
            _, first = np.unique(slots[empty], return_index=True)  # one key an empty slot
            won = empty[first]
            at, taken = slots[won], pending[won]
            self.low[at], self.high[at], self.counts[at] = low[taken], high[taken], counts[taken]
            lost = np.ones(len(pending), dtype=bool)
            lost[won] = False
            pending, slots = pending[lost], (slots[lost] + 1) & (self.size - 1)
        self.n += len(low)


def ascii_word_counts(text: str, table: AsciiWordTable,
                      long_counts: Callable[[list[str]], np.ndarray],
                      encode: Callable[[list[str]], list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(word ends, token counts) of a text that `takes_fast_path`. Words of up to KEY_BYTES bytes are
    counted by `table` (missing ones encoded with `encode`, then added), longer ones by `long_counts` (the
    string cache)."""
    padded = text.encode("ascii") + _PAD
    ends = word_ends(np.frombuffer(padded, dtype=np.uint8, count=len(text)))
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1]
    low, high = word_keys(padded, starts, ends - starts)
    counts = table.lookup(low, high)
    missing = np.flatnonzero((counts == 0) & (low != 0))  # a word always has a token: 0 is a miss
    if len(missing):
        pairs = np.stack([low[missing], high[missing]], axis=1)
        new, first, inverse = np.unique(pairs, axis=0, return_index=True, return_inverse=True)
        where = missing[first].tolist()
        new_counts = np.asarray(encode([text[starts[i]:ends[i]] for i in where]), dtype=np.int32)
        table.insert(np.ascontiguousarray(new[:, 0]), np.ascontiguousarray(new[:, 1]), new_counts)
        counts[missing] = new_counts[inverse.reshape(-1)]
    long_at = np.flatnonzero(low == 0)
    if len(long_at):
        words = [text[s:e] for s, e in zip(starts[long_at].tolist(), ends[long_at].tolist())]
        counts[long_at] = long_counts(words)
    return ends, counts
