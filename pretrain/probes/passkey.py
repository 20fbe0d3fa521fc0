"""PASSKEY retrieval (Mohtashami & Jaggi, 2023): a 5-digit key hidden at a depth in filler text.

The filler is their repeated "The grass is green. The sky is blue..." block; the key sentence sits at
`depth` (0 = start, 1 = end) of the filler; the answer counts when its first number equals the key.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from longscale.common.plotting import new_figure, save_figure
from pretrain.probes.model import Answerer
from pretrain.probes.results import ProbeInputError, write_result

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"


def build_prompt(tokenizer, length: int, key: int, depth: float) -> list[int]:
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head, key_ids, tail, filler = enc(TASK), enc(KEY.format(key=key)), enc(QUESTION), enc(FILLER)
    room = length - len(head) - len(key_ids) - len(tail)
    if room < len(filler):
        raise ProbeInputError(f"--lengths {length} is too short for the passkey prompt")
    body = (filler * (room // len(filler) + 1))[:room]
    cut = int(round(depth * room / len(filler))) * len(filler)
    cut = min(cut, (room // len(filler)) * len(filler))
    return head + body[:cut] + key_ids + body[cut:] + tail


def score(key: int, answer: str) -> bool:
    found = re.search(r"\d+", answer)
    return found is not None and int(found.group()) == key


def run_passkey(answerer: Answerer, tokenizer, lengths: list[int], *, samples: int = 5,
                depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0,
                output: Path | None = None, label: str = "model", progress: bool = True) -> dict:
    from longscale.common.progress import progress as progress_bar

    rng = random.Random(seed)
    accuracy, records = {}, []
    for length in lengths:
        hits = total = 0
        for depth in progress_bar(depths, desc=f"passkey {length}", disable=not progress, leave=False):
            for _ in range(samples):
                key = rng.randint(10000, 99999)
                answer = answerer([build_prompt(tokenizer, length, key, depth)], 8)[0]
                ok = score(key, answer)
                hits, total = hits + ok, total + 1
                records.append({"length": length, "depth": depth, "key": key, "answer": answer, "correct": ok})
        accuracy[str(length)] = hits / total
    result = {"probe": "passkey", "model": label, "samples_per_depth": samples, "depths": list(depths),
              "accuracy": accuracy, "records": records}
    if output:
        write_result(output, "passkey", result)
        fig, ax = new_figure("PASSKEY retrieval", "context length (tokens)", "accuracy")
        xs = sorted(int(k) for k in accuracy)
        ax.plot(xs, [accuracy[str(x)] for x in xs], marker="o", label=label)
        ax.set_xscale("log", base=2), ax.set_ylim(-0.05, 1.05), ax.legend()
        save_figure(fig, output / "passkey.png")
    return result
