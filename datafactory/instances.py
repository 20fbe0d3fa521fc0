"""Long training instances: the paper's Figure 10 templates around the (truncated) whole document.

The document is cut to fit `max_context` tokens of the TARGET tokenizer (the model to be finetuned), minus
what the template, question and answer take. The kept text is one contiguous window that always contains
the source chunk: the start of the document when the chunk lies within the budget from the start, else a
window centred on the chunk; a cut side is moved (by at most 1/16 of the window) to a paragraph or sentence
boundary so the text reads naturally. One contiguous window (rather than head + chunk) keeps the text natural; the
cost is that a late chunk loses the document's opening. What was kept is recorded (token and char spans).

The target encoding may cover only a region around the chunk (planning.py makes it reach at least the
budget past the chunk on each side, or the document's edge), which decides the window exactly as the
whole document's encoding would; token positions are then unknown and recorded as null.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from datafactory.chunking import (
    PARAGRAPH_BREAK,
    SENTENCE_END,
    Chunk,
    TokenizedText,
    backend_of,
    count_tokens,
    last_cut,
)
from datafactory.word_tokens import WordCounter
from longscale.common.instances import ChatTurn, LongQAInstance

NORMAL_TEMPLATE = ('You are given a long text (delimited by triple quotes) and a question. Read the text and answer '
                   'the question in the end. """ {document} """\n\nQuestion: {question}')
SHORT_TEMPLATE = ('You are given a long text (delimited by triple quotes) and a question. Read the text and answer '
                  'the question in the end as concisely as you can, using a single phrase or sentence if possible. '
                  'Do not provide any explanation. """ {document} """ Question: {question}')
TEMPLATES = {"normal": NORMAL_TEMPLATE, "short": SHORT_TEMPLATE}
# Boundary effects of re-tokenizing a cut window, and BOS/EOS that a trainer may add.
SAFETY_TOKENS = 8


class ChunkDoesNotFit(ValueError):
    """The source chunk alone is longer than the instance's document budget."""

    def __init__(self, chunk_tokens: int, budget: int):
        super().__init__(f"the source chunk takes {chunk_tokens} target tokens, more than the {budget} left for "
                         "the document; lower --chunk-tokens or raise --max-context")
        self.chunk_tokens, self.budget = chunk_tokens, budget


@dataclass(frozen=True)
class Window:
    token_start: int | None  # in the document; None when its encoding did not start at the document's start
    token_end: int | None
    char_start: int
    char_end: int
    document_tokens: int | None  # None when only a region of the document was tokenized
    truncated: bool
    n_tokens: int


def user_message(answer_type: str, document: str, question: str) -> str:
    return TEMPLATES[answer_type].format(document=document, question=question)


def llama2_rendering(answer_type: str, user: str, answer: str) -> str:
    """The Llama-2 chat rendering of Figure 10 (normal: answer on its own line; short: inline)."""
    if answer_type == "normal":
        return f"[INST] {user}\n[/INST]\n{answer}"
    return f"[INST] {user} [/INST] {answer}"


_TEMPLATE_TOKENS: dict[tuple[int, str], tuple[Any, int]] = {}


def _template_tokens(answer_type: str, target_tokenizer: Any) -> int:
    """Tokens of an instance with an empty document, question and answer (cached per tokenizer)."""
    key = (id(target_tokenizer), answer_type)
    cached = _TEMPLATE_TOKENS.get(key)
    if cached is not None and cached[0] is target_tokenizer:
        return cached[1]
    messages = [{"role": "user", "content": user_message(answer_type, "", "")},
                {"role": "assistant", "content": ""}]
    count = None
    if getattr(target_tokenizer, "chat_template", None):
        try:
            ids = target_tokenizer.apply_chat_template(messages, tokenize=True)
            count = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        except Exception:  # a template that refuses these roles: fall back to the plain rendering
            count = None
    if count is None:
        count = count_tokens([llama2_rendering(answer_type, messages[0]["content"], "")], target_tokenizer)[0]
    _TEMPLATE_TOKENS[key] = (target_tokenizer, count)
    return count


def overhead_tokens(answer_type: str, question: str, answer: str, target_tokenizer: Any) -> int:
    """Tokens an instance takes besides the document: the target's chat template when it has one (else the
    [INST] rendering) around empty fields, plus the question and answer, plus a safety margin. Rendering the
    template once per tokenizer keeps instance building cheap (benchmark (b))."""
    return _template_tokens(answer_type, target_tokenizer) + _count(question, target_tokenizer) \
        + _count(answer, target_tokenizer) + SAFETY_TOKENS


def _count(text: str, target_tokenizer: Any) -> int:
    """Tokens of a short text: by words where that is exact (word_tokens.py; an encode call holds the event
    loop's GIL ~0.1 ms), else encoded."""
    counter = WordCounter.for_backend(backend_of(target_tokenizer))
    counted = counter.count(text) if counter is not None else None
    return counted if counted is not None else count_tokens([text], target_tokenizer)[0]


def fit_window(document: TokenizedText, chunk_char_span: tuple[int, int], budget: int,
               chunk_token_span: tuple[int, int] | None = None) -> Window:
    """The contiguous token window of at most `budget` tokens that holds the chunk (start kept if possible).

    `chunk_token_span` skips the lookup when `document` is the very encoding the chunk was cut from.
    """
    n = document.n_tokens
    if chunk_token_span is not None:
        chunk_start, chunk_end = chunk_token_span
    else:
        chunk_start = document.last_token_before(chunk_char_span[0])  # first token ending after the chunk start
        chunk_end = max(chunk_start + 1, document.first_token_at(chunk_char_span[1], chunk_start))
    if chunk_end - chunk_start > budget:
        raise ChunkDoesNotFit(chunk_end - chunk_start, budget)
    if n <= budget:
        start, end = 0, n
    elif chunk_end <= budget:
        start, end = 0, budget
    else:
        start = chunk_start - (budget - (chunk_end - chunk_start)) // 2
        start = max(0, min(start, n - budget))
        end = start + budget
    text = document.text
    # a region reaches past the budget on any side where it stops short of the document's edge, so start 0
    # and end n are the document's edges there
    char_start = document.char_start if start == 0 else min(document.start_char(start), chunk_char_span[0])
    char_end = document.char_end if end >= n else max(document.end_char(end - 1), chunk_char_span[1])
    slack = min(4000, (char_end - char_start) // 16)  # how much text a cut side may give up to read naturally
    if start > 0:  # begin at the next paragraph (else sentence) start, never past the chunk
        char_start = _snap_forward(text, char_start, max(char_start, min(chunk_char_span[0], char_start + slack)))
        start = document.first_token_at(char_start, start, max(start, chunk_start) + 1)
    if end < n:  # end at the last paragraph (else sentence) end, never before the chunk
        char_end = _snap_backward(text, min(char_end, max(chunk_char_span[1], char_end - slack)), char_end)
        end = document.last_token_before(char_end, min(end, chunk_end) - 1, end)
    truncated = not (document.whole and start == 0 and end >= n)
    offset_known = document.covers_start
    return Window(start if offset_known else None, end if offset_known else None, char_start, char_end,
                  n if document.whole else None, truncated, end - start)


def _snap_forward(text: str, lo: int, hi: int) -> int:
    match = PARAGRAPH_BREAK.search(text, lo, hi) or SENTENCE_END.search(text, lo, hi)
    pos = match.end() if match else lo
    while pos < hi and text[pos].isspace():
        pos += 1
    return pos


def _snap_backward(text: str, lo: int, hi: int) -> int:
    cut = last_cut(PARAGRAPH_BREAK, text, lo, hi, at_start=True)
    if cut is None:
        cut = last_cut(SENTENCE_END, text, lo, hi, at_start=False)
    return hi if cut is None else cut


def build_instance(qa_record: dict[str, Any], chunk: Chunk, document: TokenizedText, max_context: int,
                   target_tokenizer: Any, same_encoding: bool = False) -> dict[str, Any]:
    """A long QA instance (chat messages + [INST] rendering) for one accepted pair, built and validated
    through the shared contract (longscale.common.instances.LongQAInstance; docs/instances.md).

    `document` is the document tokenized with the TARGET tokenizer; `chunk` spans characters of the same text
    (`same_encoding`: the chunk was cut from this very encoding, so its token span is reused).
    """
    answer_type, question, answer = qa_record["answer_type"], qa_record["question"], qa_record["answer"]
    overhead = overhead_tokens(answer_type, question, answer, target_tokenizer)
    window = fit_window(document, chunk.char_span, max_context - overhead,
                        chunk.token_span if same_encoding else None)
    kept = document.text[window.char_start:window.char_end]
    user = user_message(answer_type, kept, question)
    return LongQAInstance(
        id=qa_record["id"],
        doc_id=qa_record["doc_id"],
        chunk_index=chunk.index,
        answer_type=answer_type,
        messages=[ChatTurn(role="user", content=user), ChatTurn(role="assistant", content=answer)],
        text=llama2_rendering(answer_type, user, answer),
        question=question,
        answer=answer,
        truncated=window.truncated,
        document_tokens=window.document_tokens,
        kept_token_span=[window.token_start, window.token_end] if window.token_start is not None
        and window.token_end is not None else None,
        kept_char_span=[window.char_start, window.char_end],
        chunk_char_span=list(chunk.char_span),
        approx_tokens=window.n_tokens + overhead,
        model=qa_record.get("model"),
    ).to_record()
