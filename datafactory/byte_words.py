"""word_tokens.WORDS over a long text's UTF-8 bytes in numpy: the word ends and each word's token count,
without a Python string or a dictionary look-up per word for most words.

A word ("a whitespace run and the non-whitespace run after it, or a trailing whitespace run") ends where a
non-whitespace byte is followed by a whitespace one, and at the text's end. That holds on the bytes of a
text whose only whitespace is ASCII's six (\t \n \v \f \r and space): no byte of a non-ASCII
character's UTF-8 is one of those, so curly quotes, accents, CJK and emoji stay inside their words. A word
of at most KEY_BYTES bytes is keyed exactly by its bytes (two little-endian uint64 halves, zero-padded: a
text holding NUL is not taken here, so no two words share a key) in an open-addressing hash table probed
for every word at once; longer words (~0.1% of English prose's) take the string cache of
word_tokens.WordCounter. Byte ends become character ends by subtracting the UTF-8 continuation bytes
before them (none in ASCII). A 30 KB document costs ~0.35 ms (ASCII; ~0.5 ms with non-ASCII characters)
instead of ~1.8 ms by the regex, one dictionary look-up a word and a numpy conversion of their counts.

The trade-off: a text holding a non-ASCII whitespace character (NBSP, the U+2000 spaces, ideographic space,
NEL) or NUL takes the regex, as do short texts (MIN_CHARS: each numpy call costs a few microseconds, more
than a short text's regex pass) and every tokenizer not counted by words. The table holds up to `limit`
words and then restarts, like the string cache. tests/datafactory/test_df_byte_words.py checks the ends
against the regex and the counts against real encodings.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

KEY_BYTES = 16  # a word of up to 16 bytes is keyed by two uint64 halves (99.9% of English prose's words)
MIN_CHARS = 2048  # shorter texts take the regex: the fixed cost of the numpy calls is larger than its pass
# the tokenizer's whitespace (Unicode White_Space, as its regex engine has it); Python's \s also has \x1c-\x1f
ASCII_WHITESPACE = "\t\n\x0b\x0c\r "
OTHER_WHITESPACE = "\x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
_SPACE_TABLE = bytes(byte in ASCII_WHITESPACE.encode() for byte in range(256))  # for bytes.translate: 1 a space
# the mask of a word's first 8 bytes by its length (0-16, then 17 for every longer word, which masks to 0: not keyed) and
# of its next 8 bytes by its length (words of 9-16 bytes)
_LOW_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [2**64 - 1] * 9 + [0], dtype=np.uint64)
_HIGH_MASKS = np.array([(1 << (8 * (n - 8))) - 1 if n > 8 else 0 for n in range(KEY_BYTES + 1)] + [0],
                       dtype=np.uint64)
_MAX_LENGTH = np.int64(KEY_BYTES + 1)  # every longer word shares the last (zero) masks
_PAD = b"\x00" * KEY_BYTES
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * 2^64/phi
_MIX = np.uint64(0xC2B2AE3D27D4EB4F)


def takes_fast_path(text: str) -> bool:
    """Whether `word_counts` applies: long, no NUL, and ASCII (an O(1) flag of the string) or at least
    without non-ASCII whitespace (a scan a character of OTHER_WHITESPACE, ~65 us for 40 KB)."""
    return len(text) >= MIN_CHARS and "\x00" not in text \
        and (text.isascii() or not any(space in text for space in OTHER_WHITESPACE))


def word_ends(data: bytes) -> np.ndarray:
    """End offsets (int64, exclusive) of WORDS' matches over UTF-8 bytes without non-ASCII whitespace: after
    each non-whitespace byte that a whitespace byte follows, and at the end."""
    if not data:
        return np.zeros(0, dtype=np.int64)
    space = np.frombuffer(data.translate(_SPACE_TABLE), dtype=np.bool_)
    ends = np.flatnonzero(space[1:] > space[:-1])
    ends += 1
    return np.append(ends, len(data))


def word_keys(padded: bytes, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each word's key: its first and next 8 bytes as little-endian uint64s (zero-padded), (0, 0) for a word
    longer than KEY_BYTES. `padded` is the text's bytes and KEY_BYTES zero bytes (every start can read 16)."""
    at_every_byte = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    low = at_every_byte[starts]
    low &= _LOW_MASKS[np.minimum(lengths, _MAX_LENGTH)]
    high = np.zeros(len(starts), dtype=np.uint64)
    long_words = np.flatnonzero(lengths > 8)  # ~15% of prose's words have a second half
    high[long_words] = at_every_byte[starts[long_words] + 8] & _HIGH_MASKS[np.minimum(lengths[long_words], _MAX_LENGTH)]
    return low, high


class WordTable:
    """Token counts by word key: a linear-probing hash table (load at most 1/4) whose slots are rows of
    (low half, high half, count) in one uint64 array, so a probe is one gather."""

    def __init__(self, limit: int, bits: int = 14) -> None:
        self.limit, self._initial_bits = limit, bits
        self._reset(bits)

    def _reset(self, bits: int) -> None:
        self.bits, self.size = bits, 1 << bits
        self.slots = np.zeros((self.size, 3), dtype=np.uint64)  # low 0: an empty slot (no word starts with NUL)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def _home(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        return (((low ^ (high * _MIX)) * _MULTIPLIER) >> np.uint64(64 - self.bits)).astype(np.intp)

    def lookup(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Counts of the keys (int32), 0 where not in the table; every key probes at once."""
        at = self._home(low, high)
        rows = self.slots[at]
        hit = (rows[:, 0] == low) & (rows[:, 1] == high)
        out = np.where(hit, rows[:, 2], np.uint64(0)).astype(np.int32)
        pending = np.flatnonzero(~hit & (rows[:, 0] != 0))  # collided with another key: probe on
        mask = self.size - 1
        while len(pending):
            at_p = (at[pending] + 1) & mask
            at[pending] = at_p
            rows = self.slots[at_p]
            hit = (rows[:, 0] == low[pending]) & (rows[:, 1] == high[pending])
            out[pending[hit]] = rows[hit, 2]
            pending = pending[~hit & (rows[:, 0] != 0)]
        return out

    def insert(self, low: np.ndarray, high: np.ndarray, counts: np.ndarray) -> None:
        """Add distinct keys not in the table; it restarts when `limit` would be passed, grows at 1/4 full."""
        if self.n + len(low) > self.limit:
            self._reset(self._initial_bits)
        if 4 * (self.n + len(low)) > self.size:
            old = self.slots[self.slots[:, 0] != 0]
            bits = self.bits
            while 4 * (self.n + len(low)) > 1 << bits:
                bits += 1
            self._reset(bits)
            self._place(old[:, 0], old[:, 1], old[:, 2])
        self._place(low, high, counts.astype(np.uint64))

    def _place(self, low: np.ndarray, high: np.ndarray, counts: np.ndarray) -> None:
        pending, at = np.arange(len(low)), self._home(low, high)
        while len(pending):
            empty = np.flatnonzero(self.slots[at, 0] == 0)
            _, first = np.unique(at[empty], return_index=True)  # one key an empty slot
            won = empty[first]
            taken = pending[won]
            self.slots[at[won]] = np.stack([low[taken], high[taken], counts[taken]], axis=1)
            lost = np.ones(len(pending), dtype=bool)
            lost[won] = False
            pending, at = pending[lost], (at[lost] + 1) & (self.size - 1)
        self.n += len(low)


def _starts(ends: np.ndarray) -> np.ndarray:
    """Each word's start: the previous word's end (0 for the first)."""
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1]
    return starts


def word_counts(text: str, table: WordTable, long_counts: Callable[[list[str]], np.ndarray],
                encode: Callable[[list[str]], list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(word ends in characters, token counts) of a text that `takes_fast_path`. Words of up to KEY_BYTES
    bytes are counted by `table` (missing ones encoded with `encode`, then added), longer ones by
    `long_counts` (the string cache)."""
    data = text.encode("utf-8")
    byte_ends = word_ends(data)
    byte_starts = _starts(byte_ends)
    low, high = word_keys(data + _PAD, byte_starts, byte_ends - byte_starts)
    if len(data) == len(text):  # ASCII: a byte a character
        ends, starts = byte_ends, byte_starts
    else:
        continuation = np.flatnonzero((np.frombuffer(data, dtype=np.uint8) & 0xC0) == 0x80)
        ends = byte_ends - np.searchsorted(continuation, byte_ends)
        starts = _starts(ends)
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
