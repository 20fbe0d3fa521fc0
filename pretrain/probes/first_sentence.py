"""FIRST-SENTENCE-RETRIEVAL (paper section 4.1): a long text in, its first sentence out.

For each context length, `samples` windows of the evaluation texts start at a sentence whose length
is between 6 and 40 words; the window is filled with the following text up to the length, and the
model is asked for the first sentence. Score: normalised exact match of the answer's first sentence-length span.
Prompt `plain` frames the text as a document and opens the answer's quotation (works for base and
continually pretrained models); `chat` uses the tokenizer's chat template (instruct models).
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from longscale.common.plotting import new_figure, save_figure
from longscale.common.text import normalize, split_sentences
from pretrain.probes.model import Answerer
from pretrain.probes.results import ProbeInputError, write_result

PLAIN_HEAD = "Read the following text and remember how it begins.\n\n"
PLAIN_TAIL = "\n\nQuestion: What is the first sentence of the text above?\nAnswer: The first sentence of the text is \""
CHAT_TAIL = "\n\nWhat is the first sentence of the text above? Reply with that sentence only."


def build_prompt(tokenizer, text_ids: list[int], mode: str) -> list[int]:
    if mode == "plain":
        head = tokenizer(PLAIN_HEAD, add_special_tokens=False)["input_ids"]
        tail = tokenizer(PLAIN_TAIL, add_special_tokens=False)["input_ids"]
        return head + text_ids + tail
    if mode == "chat":
        text = tokenizer.decode(text_ids)
        return tokenizer.apply_chat_template([{"role": "user", "content": text + CHAT_TAIL}],
                                             add_generation_prompt=True, tokenize=True, return_dict=False)
    raise ValueError(f"unknown prompt mode {mode!r} (plain or chat)")


def prompt_overhead(tokenizer, mode: str) -> int:
    return len(build_prompt(tokenizer, [], mode)) + 8


def make_examples(texts: list[str], tokenizer, length: int, samples: int, seed: int, mode: str) -> list[dict]:
    """`samples` windows of `length` prompt tokens, each starting at a 6-40-word sentence."""
    rng = random.Random(f"{seed}:{length}")
    budget = length - prompt_overhead(tokenizer, mode)
    if budget < 64:
        raise ProbeInputError(f"--lengths {length} is too short for the first-sentence prompt (needs {64 + length - budget})")
    pool = []
    for t, text in enumerate(texts):
        sentences = split_sentences(text)
        for i, s in enumerate(sentences):
            if 6 <= len(s.split()) <= 40 and not s.startswith(("\"", "“", "'")):
                pool.append((t, i))
    if not pool:
        raise ProbeInputError("--texts: the evaluation texts have no sentences of 6-40 words to ask for")
    split_cache: dict[int, list[str]] = {}
    examples = []
    for t, i in rng.sample(pool, min(samples * 3, len(pool))):
        sentences = split_cache.setdefault(t, split_sentences(texts[t]))
        words_needed = int(budget * 0.9) + 50
        chunk: list[str] = []
        j = i
        while j < len(sentences) and sum(len(c.split()) for c in chunk) < words_needed:
            chunk.append(sentences[j])
            j += 1
        ids = tokenizer(" ".join(chunk), add_special_tokens=False)["input_ids"][:budget]
        if len(ids) < budget:
            continue  # ran off the end of the text (every prompt of a length has the same size)
        examples.append({"gold": sentences[i], "text_ids": ids})
        if len(examples) == samples:
            break
    return examples


def strip_preamble(answer: str) -> str:
    """Drop an echoed "The first sentence of the text is:" and opening quotes (chat-style answers)."""
    answer = answer.strip()
    answer = re.sub(r"^the first sentence of the (?:text|passage)(?: above)? is:?\s*", "", answer, flags=re.I)
    return answer.lstrip("\"“' ")


def score(gold: str, answer: str) -> bool:
    """Normalised exact match: the answer's first len(gold) words equal the gold sentence's words.

    Greedy decoding goes on after the sentence (a closing quote, the next question); what follows the
    sentence is not judged, since sentence splitting of a model's run-on output is the less reliable cut.
    """
    gold_words = normalize(gold).split()
    return bool(gold_words) and normalize(strip_preamble(answer)).split()[:len(gold_words)] == gold_words


def run_first_sentence(answerer: Answerer, tokenizer, texts: list[str], lengths: list[int], *, samples: int = 10,
                       seed: int = 0, mode: str = "plain", output: Path | None = None, label: str = "model",
                       progress: bool = True, batch_size: int = 8) -> dict:
    from longscale.common.progress import progress as progress_bar

    by_length, records = {}, []
    for length in lengths:
        examples = make_examples(texts, tokenizer, length, samples, seed, mode)
        hits = 0
        prompts = [build_prompt(tokenizer, ex["text_ids"], mode) for ex in examples]
        max_new = max((len(tokenizer(ex["gold"], add_special_tokens=False)["input_ids"]) for ex in examples),
                      default=0) + 16
        answers = []
        for s in progress_bar(range(0, len(prompts), batch_size), desc=f"first-sentence {length}", disable=not progress,
                      leave=False):
            answers += answerer(prompts[s:s + batch_size], max_new)
        for ex, prompt, answer in zip(examples, prompts, answers):
            ok = score(ex["gold"], answer)
            hits += ok
            records.append({"length": length, "prompt_tokens": len(prompt), "gold": ex["gold"], "answer": answer,
                            "correct": ok})
        by_length[length] = hits / len(examples) if examples else None
    result: dict[str, Any] = {"probe": "first-sentence", "model": label, "mode": mode, "samples": samples,
              "accuracy": {str(k): v for k, v in by_length.items()}, "records": records}
    if output:
        write_result(output, "first_sentence", result)
        plot_accuracy({label: result["accuracy"]}, output / "first_sentence.png")
    return result


def plot_accuracy(curves: dict[str, dict], path: Path) -> Path:
    fig, ax = new_figure("FIRST-SENTENCE-RETRIEVAL", "context length (tokens)", "exact match")
    for label, acc in curves.items():
        xs = sorted(int(k) for k in acc)
        ax.plot(xs, [acc[str(x)] for x in xs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    return save_figure(fig, path)
