"""Hand-made long QA instances and QA pair records that follow the shared contracts (longscale.common.instances),
for tests of readers and of the output writer that must not depend on running the data factory. Every record
goes through `LongQAInstance` / `QAPair`, so a fixture can never drift from what the factory writes."""
from __future__ import annotations

from typing import Any

from longscale.common.instances import LongQAInstance, qa_pair_record

USER_TEMPLATE = ('You are given a long text (delimited by triple quotes) and a question. Read the text and answer the '
                 'question in the end. """ {document} """\n\nQuestion: {question}')


def instance_record(id: str, doc_id: str, document: str, question: str, answer: str, answer_type: str = "short",
                    user: str | None = None) -> dict[str, Any]:
    """A valid instance record; `user` replaces the Figure 10 user turn (e.g. a minimal one)."""
    user = user if user is not None else USER_TEMPLATE.format(document=document, question=question)
    return LongQAInstance.model_validate({
        "id": id, "doc_id": doc_id, "chunk_index": 0, "answer_type": answer_type,
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "text": f"[INST] {user} [/INST] {answer}", "question": question, "answer": answer, "truncated": False,
        "document_tokens": None, "kept_token_span": None, "kept_char_span": [0, len(document)],
        "chunk_char_span": [0, len(document)], "approx_tokens": max(1, len(user + answer) // 4), "model": "fixture",
    }).to_record()


def qa_record(id: str, doc_id: str = "d0", accepted: bool = True, reject_reason: str | None = None,
              **fields: Any) -> dict[str, Any]:
    """A valid QA pair record (accepted unless a reject_reason is given); `fields` override any field."""
    accepted = accepted and reject_reason is None
    base: dict[str, Any] = {
        "id": id, "doc_id": doc_id, "chunk_index": 0, "chunk_token_span": [0, 10], "chunk_char_span": [0, 40],
        "chunk_tokens": 10, "answer_type": "short", "prompt_mode": "zero-shot",
        "question": f"Q {id}?", "answer": f"A {id}",
        "critique": {"verdict": "yes", "reason": "ok", "raw": "<verdict>yes</verdict>"} if accepted else None,
        "accepted": accepted, "reject_reason": None if accepted else (reject_reason or "no_answer"),
        "model": "fixture", "raw": f"<question>Q {id}?</question><answer>A {id}</answer>",
        "finish_reason": "stop", "extraction_notes": [], "pairs_found": 1, "engine_error": None}
    return qa_pair_record({**base, **fields})
