"""Small text helpers shared by the probes and the evaluation: length lists, regex sentences, answer normalisation."""
from __future__ import annotations

import re
import string

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
