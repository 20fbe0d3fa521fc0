"""Self-critique, in one place: the prompt that asks the chat model to verify its own pair, the reply's shape for
guided decoding, the parse of its verdict, and the round that settles each pair as kept, critique_rejected,
critique_unparseable or engine_error.

The paper only says Llama 2 Chat verifies its answers; this prompt asks whether the answer is correct *and
supported by the chunk*, with the verdict in <verdict> tags and a <reason> (two worked verdicts first in
demonstration mode). Trade-off: one greedy round, no second opinion: a wrong "yes" is kept, and an unreadable
verdict costs the pair (it is counted as critique_unparseable, not guessed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datafactory.engines import sampling_params_from_config
from datafactory.engines.base import ChatMessages, EngineResult
from datafactory.extraction import _prepare, _tag_pattern, decode_content, scan_segments
from datafactory.prompts import DEMO_CHUNK, DEMO_PAIRS, DEMO_WRONG_ANSWER, _quoted

if TYPE_CHECKING:
    from datafactory.config import GenerationConfig
    from datafactory.engines.base import Engine
    from datafactory.pipeline import RequestCounter

CRITIQUE_PROMPT = (
    "You are given a text chunk (delimited by triple quotes), a question about it and a proposed answer. "
    "Check whether the answer is correct and fully supported by the text chunk. Give your verdict in XML tags: "
    "<verdict>yes</verdict> if the answer is correct and supported by the text, <verdict>no</verdict> "
    "otherwise. Then give a one-sentence justification wrapped in <reason> and </reason>."
)
# --guided xml: the verdict's shape, enforced token by token by vLLM's structured outputs (see prompts.QA_REGEX)
CRITIQUE_REGEX = r"<verdict>(yes|no)</verdict>\n<reason>[^<>]+</reason>"
CRITIQUE_MAX_NEW_TOKENS = 128
_CRITIQUE_TAGS = _tag_pattern(("verdict", "reason"))
_YES = {"yes", "y", "true", "correct", "supported", "valid", "pass"}
_NO = {"no", "n", "false", "incorrect", "unsupported", "wrong", "invalid", "fail"}


def critique_user_message(chunk_text: str, question: str, answer: str) -> str:
    return f"{CRITIQUE_PROMPT}\n\n{_quoted(chunk_text)}\n\nQuestion: {question}\nAnswer: {answer}"


def critique_messages(chunk_text: str, question: str, answer: str, demonstration: bool) -> ChatMessages:
    """The conversation that asks the model to verify its own pair (two worked verdicts in demonstration mode)."""
    messages: ChatMessages = []
    if demonstration:
        wrong_q, wrong_a = DEMO_WRONG_ANSWER
        right_q, right_a = DEMO_PAIRS["normal"]
        messages += [
            {"role": "user", "content": critique_user_message(DEMO_CHUNK, wrong_q, wrong_a)},
            {"role": "assistant", "content": "<verdict>no</verdict>\n<reason>The council refused to pay a keeper."
                                             "</reason>"},
            {"role": "user", "content": critique_user_message(DEMO_CHUNK, right_q, right_a)},
            {"role": "assistant", "content": "<verdict>yes</verdict>\n<reason>The text says she feared the reef "
                                             "would claim more boats.</reason>"},
        ]
    messages.append({"role": "user", "content": critique_user_message(chunk_text, question, answer)})
    return messages


@dataclass(frozen=True)
class CritiqueVerdict:
    verdict: str | None        # "yes" | "no" | None when unparseable
    reason: str | None
    notes: tuple[str, ...] = ()

    @property
    def parsed(self) -> bool:
        return self.verdict is not None


def _word_verdict(text: str) -> str | None:
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return None
    return "yes" if words[0] in _YES else "no" if words[0] in _NO else None


def parse_critique(text: str | None, finish_reason: str | None = None) -> CritiqueVerdict:
    """The verdict (yes|no) and reason of a self-critique reply; verdict None when it cannot be read. Never raises
    (the tag scanner and lxml decoding are extraction's)."""
    notes: list[str] = []
    try:
        if not text or not text.strip():
            return CritiqueVerdict(None, None, ("empty_output",))
        segments = scan_segments(_prepare(text, notes), _CRITIQUE_TAGS, notes)
        verdicts = [decode_content(s.raw) for s in segments if s.name == "verdict"]
        reasons = [decode_content(s.raw) for s in segments if s.name == "reason"]
        reason = next((r for r in reasons if r), None)
        for candidate in verdicts:
            verdict = _word_verdict(candidate)
            if verdict:
                return CritiqueVerdict(verdict, reason, tuple(notes))
        if not verdicts:  # no tag at all: accept a reply that starts with a bare yes/no
            verdict = _word_verdict(text[:40])
            if verdict:
                return CritiqueVerdict(verdict, reason or decode_content(text)[:300], tuple(notes) + ("untagged",))
        return CritiqueVerdict(None, reason, tuple(notes) + (("truncated",) if finish_reason == "length" else ()))
    except Exception as exc:
        return CritiqueVerdict(None, None, tuple(notes) + (f"error:{type(exc).__name__}",))


def settle(record: dict[str, Any], result: EngineResult) -> None:
    """One QA record after its critique reply: kept on "yes", else rejected with the reason why."""
    if not result.ok:
        record.update(accepted=False, reject_reason="engine_error", engine_error=f"critique: {result.error}",
                      critique={"verdict": None, "reason": None, "raw": None})
        return
    verdict = parse_critique(result.text, result.finish_reason)
    record["critique"] = {"verdict": verdict.verdict, "reason": verdict.reason, "raw": result.text}
    if verdict.verdict != "yes":
        record.update(accepted=False,
                      reject_reason="critique_rejected" if verdict.verdict == "no" else "critique_unparseable")


async def critique_round(pending: list[tuple[str, dict[str, Any]]], config: GenerationConfig, engine: Engine,
                         demonstration: bool, counter: RequestCounter) -> None:
    """Verify every (chunk text, accepted record) pair in one batch of greedy requests; settles the records."""
    if not pending:
        return
    params = sampling_params_from_config(
        config, max_new_tokens=min(CRITIQUE_MAX_NEW_TOKENS, config.max_new_tokens), temperature=0.0, top_p=1.0,
        guided_regex=CRITIQUE_REGEX if config.guided == "xml" else None)
    conversations = [critique_messages(chunk, rec["question"], rec["answer"], demonstration) for chunk, rec in pending]
    for (_chunk, rec), res in zip(pending, await counter.call(engine, conversations, params), strict=True):
        settle(rec, res)
