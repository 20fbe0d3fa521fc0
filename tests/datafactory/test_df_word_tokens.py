"""Word-level token counting (datafactory/word_tokens.py) against the real SmolLM2 tokenizer: exact counts on
the sample books, slices of them and awkward synthetic text; plans whose decisions (too short, chunk budget,
instance fit) are the ones a single real encoding gives."""
from __future__ import annotations

import random

import pytest

from datafactory.chunking import backend_of
from datafactory.config import GenerationConfig
from datafactory.documents import sample_corpus_dir
from datafactory.instances import SAFETY_TOKENS, _template_tokens, build_instance, overhead_tokens
from datafactory.pipeline import load_tokenizers
from datafactory.planning import PlanSettings, plan_tokens
from datafactory.word_tokens import WordCounter, WordTokenizedText


@pytest.fixture(scope="module")
def backend(embedded_model_dir):
    return backend_of(load_tokenizers(GenerationConfig(model=str(embedded_model_dir))).generator)


def _books() -> list[str]:
    return [p.read_text() for p in sorted(sample_corpus_dir().glob("*.txt"))]


def _awkward(rng: random.Random) -> str:
    """Text that stresses the split: mixed whitespace (Unicode and ASCII separators), digits, contractions,
    punctuation runs, accents, CJK, emoji."""
    pieces = ["word", " word", "  ", "\n", "\n\n", "\t", "\u3000", "\x85", "\xa0", "\x1c", "\x1f", "\u2028",
              "\u200b", "\u180e", "\u2007", "\u202f", "\ufeff", "\x0b", "'s", "'ll", "'S", "123",
              " 4567", "...", "!?", "\u00e9t\u00e9", "\u4e2d\u6587", "\U0001F600", "--", " \"quoted\"", "\r\n", "x" * 40]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 400)))


def _exact(backend, text: str) -> int:
    return len(backend.encode(text, add_special_tokens=False).ids)


def test_word_counts_equal_a_real_encoding(backend):
    counter = WordCounter.for_backend(backend)
    assert counter is not None  # SmolLM2: byte-level BPE, the supported kind
    rng = random.Random(0)
    texts = _books() + [_awkward(rng) for _ in range(300)]
    for book in _books():  # slices starting and ending anywhere
        for _ in range(30):
            a = rng.randrange(len(book))
            texts.append(book[a:a + rng.randint(1, 40_000)])
    for text in texts:
        counted = counter.tokenize(text, 0, len(text))
        assert isinstance(counted, WordTokenizedText)
        assert counted.n_tokens == _exact(backend, text), text[:80]


def test_text_with_an_added_token_is_left_to_the_tokenizer(backend):
    counter = WordCounter.for_backend(backend)
    text = "A document that quotes <|im_start|> literally."
    assert counter.tokenize(text, 0, len(text)) is None
    plan = plan_tokens(text * 2000, "d", backend, backend, PlanSettings(500, 1, 0, 16, 4096))
    assert not isinstance(plan.target, WordTokenizedText) and plan.chunks


def test_a_wrapped_tokenizer_is_not_counted_by_words(backend):
    class Wrapper:
        def encode_batch(self, texts, add_special_tokens=False):
            return backend.encode_batch(texts, add_special_tokens=add_special_tokens)

    assert WordCounter.for_backend(Wrapper()) is None


def test_word_plans_decide_as_a_real_encoding(backend):
    """Documents cut around the min-doc-tokens threshold and around the instance's fit: the word-level plan
    says too short exactly when one real encoding does, its chunks stay within budget, and every instance
    (kept text re-encoded) fits max_context."""
    books, rng = _books(), random.Random(1)
    qa = {"id": "q", "doc_id": "d", "question": "Who wrote the letter?", "answer": "Captain Wentworth did."}
    for i in range(60):
        book = rng.choice(books)
        start = rng.randrange(len(book) // 2)
        max_context = rng.choice([2048, 4096, 16384])
        min_doc = rng.choice([0, 1024, 4096])
        # lengths near min_doc (too short or not), near max_context (fits or is cut), and long
        target_tokens = rng.choice([min_doc - 3, min_doc + 3, max_context - 40, max_context + 40, 3 * max_context])
        text = book[start:start + max(1, int(target_tokens * 4.1))]
        settings = PlanSettings(chunk_tokens=rng.choice([300, 1500]), chunks_per_doc=rng.choice([1, 2]), seed=i,
                                min_doc_tokens=min_doc, max_context=max_context)
        plan = plan_tokens(text, f"d{i}", backend, backend, settings)
        exact = _exact(backend, text)
        assert plan.n_tokens == exact
        assert plan.too_short == (exact < max(1, min_doc))
        if plan.too_short:
            continue
        for chunk in plan.chunks:
            assert chunk.n_tokens <= settings.chunk_tokens
            assert chunk.token_span is not None  # positions are the document's own
            assert abs(_exact(backend, chunk.text) - chunk.n_tokens) <= 2
            for answer_type in ("normal", "short"):
                instance = build_instance({**qa, "answer_type": answer_type}, chunk, plan.target, max_context, backend)
                start_char, end_char = instance["kept_char_span"]
                kept_tokens = _exact(backend, text[start_char:end_char])
                assert instance["approx_tokens"] <= max_context
                assert kept_tokens <= instance["kept_token_span"][1] - instance["kept_token_span"][0] + 2
                budget = max_context - overhead_tokens(answer_type, qa["question"], qa["answer"], backend)
                assert instance["truncated"] == (exact > budget)
                assert start_char <= chunk.char_start and chunk.char_end <= end_char


def test_a_full_cache_restarts_and_still_counts(backend, monkeypatch):
    import datafactory.word_tokens as word_tokens

    counter = word_tokens.WordCounter(backend, [])
    monkeypatch.setattr(word_tokens, "CACHE_LIMIT", 50)
    book = _books()[0]
    for start in range(0, 20_000, 5_000):
        text = book[start:start + 5_000]
        assert counter.tokenize(text, 0, len(text)).n_tokens == _exact(backend, text)
        assert len(counter.cache) <= max(50, len(set(word_tokens.WORDS.findall(text))))


def test_word_count_of_short_texts_equals_a_real_encoding(backend):
    """WordCounter.count (an instance's question and answer) is the real encoding's length, and None for a
    text holding an added token (overhead_tokens then encodes it)."""
    counter = WordCounter.for_backend(backend)
    rng = random.Random(1)
    texts = ["", " ", "What is the name of the ship?", " Captain Ahab's leg.", "\n\nA\tB"] + \
        [_awkward(rng)[:rng.randint(0, 200)] for _ in range(300)]
    for text in texts:
        assert counter.count(text) == _exact(backend, text), repr(text[:80])
    assert counter.count("Why <|im_start|>?") is None
    for question, answer in [("Why <|im_start|>?", "Because."), ("Who?", "\u4e2d\u6587 \U0001F600 ok")]:
        for kind in ("normal", "short"):
            # the same total as encoding both with the tokenizer (as overhead_tokens did before)
            expected = _template_tokens(kind, backend) + _exact(backend, question) + _exact(backend, answer) \
                + SAFETY_TOKENS
            assert overhead_tokens(kind, question, answer, backend) == expected


def _reference_ends(backend, text: str) -> tuple[list[int], list[int]]:
    """Cumulative word lengths and cumulative real token counts of each word encoded alone."""
    import datafactory.word_tokens as word_tokens

    words = word_tokens.WORDS.findall(text)
    char_ends, token_ends, chars, tokens = [], [], 0, 0
    for word in words:
        chars, tokens = chars + len(word), tokens + _exact(backend, word)
        char_ends.append(chars)
        token_ends.append(tokens)
    return char_ends, token_ends


def test_positions_equal_the_words_encoded_alone_across_cache_misses_and_restarts(backend, monkeypatch):
    """The word arrays are the cumulative lengths and token counts of the words, whether a text's words were
    all cached, partly cached (the second look-up pass) or overflow the cache (the restart must relearn the
    words it forgets, not only the new ones)."""
    import datafactory.word_tokens as word_tokens

    monkeypatch.setattr(word_tokens, "CACHE_LIMIT", 60)
    counter = word_tokens.WordCounter(backend, [])
    book = _books()[1]
    texts = [book[:400], book[:400], book[200:900], book[5_000:5_600], book[:400] + " Zyxxq qqvw."]
    for text in texts:
        counted = counter.tokenize(text, 0, len(text))
        assert counted is not None
        assert (list(counted.char_ends), list(counted.token_ends)) == _reference_ends(backend, text)
        assert counter.count(text) == _exact(backend, text)
    assert counter.tokenize("", 0, 0).n_tokens == 0 and counter.count("") == 0


def test_added_tokens_are_found_whatever_their_first_character(backend):
    counter = WordCounter.for_backend(backend)
    assert counter is not None
    assert counter.holds_special("text <|endoftext|>") and counter.holds_special("<|im_end|>")
    prose = "x < y, <b>bold</b> and <| not a token |>"
    assert not counter.holds_special(prose) and counter.count(prose) == _exact(backend, prose)
    other = WordCounter(backend, ["<|a|>", "[SEP]", "##x"])
    assert other.holds_special("one [SEP] two") and other.holds_special("##x") and not other.holds_special("[SE P] #x")
