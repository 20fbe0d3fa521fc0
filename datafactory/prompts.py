"""The prompts sent to the chat model, as chat messages (the model's own chat template adds [INST] etc.).

- QA prompts: the paper's Figure 9 normal-answer and short-answer prompts, verbatim, chunk in triple quotes.
- Demonstration mode: the same prompt, preceded by one worked example (a user turn with a short invented
  passage and an assistant turn with the tagged pair). Small models (the embedded 135M one) produce no tags
  zero-shot but follow one example; the price is that they sometimes copy it, which extraction rejects
  (`copied_demonstration`). Real chat models (Llama 2 Chat) get the paper's zero-shot prompts.
- The self-critique prompt lives with the rest of the critique in datafactory/critique.py.
"""
from __future__ import annotations

import re
from pathlib import Path

from datafactory.engines.base import ChatMessages

NORMAL_PROMPT = (
    "You are given a text chunk (delimited by triple quotes) taken from a long text. Write a question about "
    "this text and provide the correct answer. The answer needs to be based on the text. This question will "
    "later be used as a reading comprehension test over the entire document. Wrap the question and answer "
    "using XML tags (<question> and </question>, <answer> and </answer>)."
)
SHORT_PROMPT = (
    "You are given a text chunk (delimited by triple quotes) from a long document. Based on information from "
    "the text, come up with a specific question **which can be answered in a few words or a single phrase** "
    "and provide the correct answer without explanation. The answer needs to be based on the text. This "
    "question will later be used as a reading comprehension test over the entire document. Wrap the question "
    "and answer using XML tags (<question> and </question>, <answer> and </answer>). Again, the answer needs "
    "to be short."
)
QA_PROMPTS = {"normal": NORMAL_PROMPT, "short": SHORT_PROMPT}

# Guided decoding (--guided xml): the shape of the reply as a regular expression, which vLLM's structured
# outputs (xgrammar) enforce token by token (the critique's: critique.CRITIQUE_REGEX). Field text may hold anything but angle brackets, so no tag can be
# opened inside a field; the reply ends where the pattern ends. A cut-off reply (max_new_tokens) is still
# possible and extraction rejects it as `truncated`.
QA_REGEX = r"<question>[^<>]+</question>\n<answer>[^<>]+</answer>"

# The worked example of demonstration mode: an invented passage (so that a copy is easy to spot).
DEMO_CHUNK = (
    "The lighthouse on Garra Point had been dark for eleven winters when Mara Quill rowed out to it with a "
    "lantern and her late father's logbook. The village council had refused to pay a keeper since the wreck "
    "of the Alder, but Mara believed the reef would claim more boats unless the light burned again."
)
DEMO_PAIRS = {
    "normal": ("Why did Mara Quill decide to relight the lighthouse on Garra Point?",
               "She believed the reef would wreck more boats unless the light burned again."),
    "short": ("What did Mara Quill take with her when she rowed out to the lighthouse?",
              "A lantern and her late father's logbook."),
}
DEMO_WRONG_ANSWER = ("Who paid Mara Quill to relight the lighthouse?", "The village council paid her.")
# Phrases of the worked example that a real chunk is unlikely to hold (checked only when the chunk lacks them).
DEMO_MARKERS = ("garra", "mara quill", "eleven winters", "wreck of the alder", "logbook", "lighthouse")


def _quoted(text: str) -> str:
    return f'"""{text}"""'


def qa_user_message(chunk_text: str, answer_type: str) -> str:
    return f"{QA_PROMPTS[answer_type]}\n\n{_quoted(chunk_text)}"


def tagged_pair(question: str, answer: str) -> str:
    return f"<question>{question}</question>\n<answer>{answer}</answer>"


def qa_messages(chunk_text: str, answer_type: str, demonstration: bool) -> ChatMessages:
    """The conversation that asks for one question-answer pair about `chunk_text`."""
    messages: ChatMessages = []
    if demonstration:
        messages += [{"role": "user", "content": qa_user_message(DEMO_CHUNK, answer_type)},
                     {"role": "assistant", "content": tagged_pair(*DEMO_PAIRS[answer_type])}]
    messages.append({"role": "user", "content": qa_user_message(chunk_text, answer_type)})
    return messages


def _normalize(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


_DEMO_TEXTS = frozenset(_normalize(t) for pair in DEMO_PAIRS.values() for t in pair)


def copies_demonstration(question: str, answer: str, chunk_text: str) -> bool:
    """True when the pair repeats the worked example instead of asking about the real chunk."""
    if _normalize(question) in _DEMO_TEXTS or _normalize(answer) in _DEMO_TEXTS:
        return True
    pair = f"{question} {answer}".lower()
    markers = [marker for marker in DEMO_MARKERS if marker in pair]
    if not markers:  # the usual case: no need to lower-case the chunk
        return False
    chunk = chunk_text.lower()
    return any(marker not in chunk for marker in markers)


def uses_demonstration(prompt_mode: str, model: str | None) -> bool:
    """Resolve prompt_mode 'auto': demonstration for the embedded model (no --model, its folder, or a server
    that serves it under its name), the paper's zero-shot prompts for anything else."""
    if prompt_mode != "auto":
        return prompt_mode == "demonstration"
    from datafactory.embedded import MODEL_NAME

    return model is None or MODEL_NAME.lower() in Path(model).name.lower()
