"""Long instances: Figure 10 templates, and truncation that always keeps the source chunk (property test)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datafactory.chunking import chunk_document, count_tokens, tokenize_texts
from datafactory.instances import ChunkDoesNotFit, build_instance, fit_window


@pytest.fixture(scope="module")
def tokenizer(embedded_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_dir)


@pytest.fixture(scope="module")
def other_tokenizer():
    """A different target tokenizer (a small BPE trained here, no chat template): counts differ from the
    generator's, so the window must be fitted in the target's own tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from datafactory.documents import sample_corpus_dir

    raw = Tokenizer(models.BPE(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"], show_progress=False)
    raw.train_from_iterator([(sample_corpus_dir() / "persuasion.txt").read_text()[:50_000]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw)


WORDS = ["Anne", "walked", "to", "Uppercross", "and", "the", "Admiral", "said", "nothing", "of", "Bath", "rain",
         "letter", "Captain", "Wentworth", "—", "é", "quiet", "house", "garden"]
paragraph = st.lists(st.sampled_from(WORDS), min_size=5, max_size=60).map(lambda ws: " ".join(ws) + ".")
document = st.lists(paragraph, min_size=3, max_size=60).map("\n\n".join)


def _qa(answer_type="normal"):
    return {"id": "x1", "doc_id": "d", "answer_type": answer_type, "question": "Who walked to Uppercross?",
            "answer": "Anne walked there in the rain.", "model": "m"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(text="Anne Anne Anne Anne walked.\n\nAnne Anne walked walked walked.\n\nAnne Anne Anne Anne Anne Anne walked "
              "walked walked walked walked walked walked walked walked walked Uppercross.", chunk_tokens=37, pick=0.0,
         max_context=260, answer_type="short", other=True, same=False)  # a chunk one token over a tiny budget
@given(text=document, chunk_tokens=st.integers(16, 120), pick=st.floats(0, 1), max_context=st.integers(260, 900),
       answer_type=st.sampled_from(["normal", "short"]), other=st.booleans(), same=st.booleans())
def test_truncation_keeps_the_source_chunk(tokenizer, other_tokenizer, text, chunk_tokens, pick, max_context,
                                           answer_type, other, same):
    target = other_tokenizer if other else tokenizer
    chunks = chunk_document(tokenize_texts([text], tokenizer)[0], chunk_tokens)
    chunk = chunks[int(pick * (len(chunks) - 1))]
    target_doc = tokenize_texts([text], target)[0]
    try:
        instance = build_instance(_qa(answer_type), chunk, target_doc, max_context, target, same_encoding=same and
                                  not other)
    except ChunkDoesNotFit as exc:
        # refused only when the chunk's own target tokens (give or take a boundary token) exceed the budget
        assert exc.chunk_tokens > exc.budget
        assert abs(exc.chunk_tokens - count_tokens([chunk.text], target)[0]) <= 2
        return
    kept = text[instance["kept_char_span"][0]:instance["kept_char_span"][1]]
    assert chunk.text in kept
    assert f'""" {kept} """' in instance["messages"][0]["content"]
    start, end = instance["kept_token_span"]
    assert end - start <= max_context and instance["truncated"] == (start > 0 or end < target_doc.n_tokens)
    # the whole rendered instance fits the target context, counted by re-tokenizing it
    assert count_tokens([instance["text"]], target)[0] <= max_context
    if not instance["truncated"]:
        assert kept == text.strip() or kept == text


def test_start_of_document_kept_when_the_chunk_is_early(tokenizer):
    text = "\n\n".join(f"Paragraph {i}: Anne walked to Uppercross and back again in the rain." for i in range(300))
    doc = tokenize_texts([text], tokenizer)[0]
    chunks = chunk_document(doc, 100)
    early = build_instance(_qa(), chunks[1], doc, 1024, tokenizer)
    assert early["truncated"] and early["kept_token_span"][0] == 0 and early["kept_char_span"][0] == 0
    late = build_instance(_qa("short"), chunks[-3], doc, 1024, tokenizer)
    assert late["kept_token_span"][0] > 0 and chunks[-3].text in late["messages"][0]["content"]
    kept = text[late["kept_char_span"][0]:late["kept_char_span"][1]]
    assert kept.startswith("Paragraph ") and kept.endswith("in the rain.")  # cut sides snap to paragraphs
    start, end = late["kept_token_span"]
    assert doc.start_char(start) == late["kept_char_span"][0] and doc.end_char(end - 1) == late["kept_char_span"][1]


def test_figure10_templates_and_rendering(tokenizer):
    text = "\n\n".join(f"Paragraph {i} of a short story." for i in range(20))
    doc = tokenize_texts([text], tokenizer)[0]
    chunk = chunk_document(doc, 40)[0]
    normal = build_instance(_qa("normal"), chunk, doc, 4096, tokenizer)
    assert not normal["truncated"]
    user = normal["messages"][0]["content"]
    assert user.startswith("You are given a long text (delimited by triple quotes) and a question. Read the text "
                           "and answer the question in the end. \"\"\" ")
    assert user.endswith("\n\nQuestion: Who walked to Uppercross?")
    assert normal["messages"][1] == {"role": "assistant", "content": "Anne walked there in the rain."}
    assert normal["text"] == f"[INST] {user}\n[/INST]\nAnne walked there in the rain."
    short = build_instance(_qa("short"), chunk, doc, 4096, tokenizer)
    assert "as concisely as you can, using a single phrase or sentence if possible. Do not provide any " \
           "explanation." in short["messages"][0]["content"]
    assert short["text"].endswith(" [/INST] Anne walked there in the rain.")


def test_chunk_larger_than_budget_is_refused(tokenizer):
    text = " ".join(["Anne walked to Uppercross."] * 400)
    doc = tokenize_texts([text], tokenizer)[0]
    with pytest.raises(ChunkDoesNotFit):
        fit_window(doc, (0, len(text)), budget=100)
