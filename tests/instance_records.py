"""Hand-made long QA instances that follow the shared contract (longscale.common.instances), for tests of
readers that must not depend on running the data factory. Every record goes through `LongQAInstance`, so a
fixture can never drift from what the factory writes."""
from __future__ import annotations

from typing import Any

from longscale.common.instances import LongQAInstance

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
