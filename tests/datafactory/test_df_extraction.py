"""Extraction on realistic ugly model outputs, plus a property test that the parser itself never fails."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datafactory.critique import parse_critique
from datafactory.extraction import check_pair, extract_qa
from datafactory.prompts import DEMO_CHUNK, DEMO_PAIRS

Q, A = "Who visited Kellynch Hall?", "Admiral Croft"

# (model output, finish_reason, expected reason (None = accepted), expected question, expected answer)
UGLY_OUTPUTS = [
    (f"<question>{Q}</question>\n<answer>{A}</answer>", "stop", None, Q, A),
    (f"Sure! Here is a question based on the text:\n\n<question>{Q}</question>\n<answer>{A}</answer>\n\n"
     "I hope this helps!", "stop", None, Q, A),
    (f"```xml\n<question>{Q}</question>\n<answer>{A}</answer>\n```", "stop", None, Q, A),
    (f"<question>{Q}</question><answer>{A}</answer><question>Second?</question><answer>Two</answer>",
     "stop", None, Q, A),
    ("<question>What did Anne & Wentworth discuss?</question><answer>Louisa & the Cobb</answer>", "stop", None,
     "What did Anne & Wentworth discuss?", "Louisa & the Cobb"),
    ("<question>Is 3 < 5 in the ledger?</question><answer>Yes, 3 < 5</answer>", "stop", None,
     "Is 3 < 5 in the ledger?", "Yes, 3 < 5"),
    ("<question>Who wrote &quot;Persuasion&quot;?</question><answer>Jane&nbsp;Austen &amp; no one else</answer>",
     "stop", None, 'Who wrote "Persuasion"?', "Jane Austen & no one else"),
    ("<question>What is &#8220;Bath&#8221;?</question><answer>A town&#x2014;a spa</answer>", "stop", None,
     "What is \u201cBath\u201d?", "A town\u2014a spa"),
    ("<question><![CDATA[Who said <hush> & left?]]></question><answer><![CDATA[Mary]]></answer>", "stop", None,
     "Who said <hush> & left?", "Mary"),
    (f"<question>\n\n   {Q}\n   </question>\n\n<answer>\n   Admiral\n   Croft  </answer>", "stop", None, Q, A),
    (f"<QUESTION>{Q}</QUESTION> <Answer>{A}</Answer>", "stop", None, Q, A),
    (f"<question>{Q}</answer>\n<answer>{A}</answer>", "stop", None, Q, A),  # mismatched closer
    (f"<question>{Q}\n<answer>{A}</answer>", "stop", None, Q, A),  # question never closed
    (f"<question><question>{Q}</question></question>\n<answer>{A}</answer>", "stop", None, Q, A),  # duplicated
    (f"<question>{Q}</question>\n<answer>{A}", "stop", None, Q, A),  # unclosed answer, ended normally
    (f"<question>{Q}</answer>\n<answer>{A}\n\nThis question will later be used as a test.", "stop", None, Q, A),
    (f"<question>{Q}\n\nThe answer is that Admiral Croft came.", "stop", "no_answer", None, None),
    (f"<question>{Q}</question>\n<answer>Admiral Croft, who had taken the house and", "length", "truncated",
     Q, "Admiral Croft, who had taken the house and"),
    (f"<question>{Q}</question>\n<ans", "length", "truncated", Q, None),
    ("<question>Who visited Kellynch", "length", "truncated", "Who visited Kellynch", None),
    ("Here is a question about the text: who visited Kellynch Hall? The answer is Admiral Croft.", "stop",
     "no_question", None, None),
    (f"<question>{Q}</question>\nThe answer is Admiral Croft.", "stop", "no_answer", Q, None),
    (f"<answer>{A}</answer>", "stop", "no_question", None, A),
    ("<question></question><answer>   </answer>", "stop", "empty", None, None),
    ("", "stop", "empty_output", None, None),
    ("   \n\t ", "stop", "empty_output", None, None),
    (f"<question>Question: {Q}</question>\n<answer>Answer: {A}</answer>", "stop", None, Q, A),
    (f"<question>**{Q}**</question><answer>**{A}**</answer>", "stop", None, Q, A),
    (f"<question>Q: {Q}</question><answer>A. Elliot</answer>", "stop", None, Q, "A. Elliot"),  # initial, not label
    (f"<answer>{A}</answer>\n<question>{Q}</question>", "stop", None, Q, A),  # order swapped
    (f"{Q}</question>\n<answer>{A}</answer>", "stop", None, Q, A),  # opener missing
    (f"<question>{Q}</question>\n<answer><b>{A}</b></answer>", "stop", None, Q, A),  # stray markup inside
    (f"<question id=\"1\">{Q}</question>\n<answer type='short'>{A}</answer>", "stop", None, Q, A),  # attributes
    (f"<question>{Q}</question>\x00\x07<answer>{A}\x1b</answer>", "stop", None, Q, A),  # control characters
    (f"<question></question><answer></answer><question>{Q}</question><answer>{A}</answer>", "stop", None, Q, A),
    # no </answer>: kept only when plainly complete (a sentence end with balanced brackets/quotes, or a short
    # phrase not ending on a function word), whatever the finish reason; otherwise the answer was cut
    (f"<question>{Q}</question>\n<answer>Admiral Croft came to rent the hall.", "stop", None, Q,
     "Admiral Croft came to rent the hall."),
    (f"<question>{Q}</question>\n<answer>Admiral Croft (the new tenant).\n\nI hope this", "length", None, Q,
     "Admiral Croft (the new tenant)."),
    (f'<question>{Q}</question>\n<answer>He said "Kellynch is let."', "stop", None, Q, 'He said "Kellynch is let."'),
    (f"<question>{Q}</question>\n<answer>Bath, Somerset", "stop", None, Q, "Bath, Somerset"),
    ("<question>Did Anne stay?</question>\n<answer>Yes", None, None, "Did Anne stay?", "Yes"),
    (f"<question>{Q}</question>\n<answer>Admiral Croft, who had taken the house and", "stop", "truncated", Q,
     "Admiral Croft, who had taken the house and"),
    (f"<question>{Q}</question>\n<answer>Admiral Croft visited the", "stop", "truncated", Q, None),
    (f'<question>{Q}</question>\n<answer>He said "Kellynch is let.', "stop", "truncated", Q, None),
    (f"<question>{Q}</question>\n<answer>Admiral Croft (the new tenant.", "stop", "truncated", Q, None),
    (f"<question>{Q}</question>\n<answer>Admiral Croft, who rented it", "stop", "truncated", Q, None),
    (f"<question>{Q}</question>\n<answer>The admiral and his wife took the house for a year", "stop", "truncated",
     Q, None),
    (f"<question>{Q}</question>\n<answer>Admiral Croft.\nHe had taken the", "length", "truncated", Q, None),
    (f"<question>{Q}</question>\n<answer>Admiral Croft;\n\nand then", "stop", "truncated", Q, None),
]

# (question, answer, expected reason from check_pair: None = kept). Short factual answers (yes/no, a number, a
# name, one of the question's alternatives) are kept even when they share words with the question.
RESTATEMENTS = [
    ("Was Captain Wentworth in the navy?", "Yes, Captain Wentworth was in the navy.", None),
    ("Did Anne stay at Kellynch Hall?", "No, Anne did not stay at Kellynch Hall.", None),
    ("Did Anne marry Wentworth?", "Yes.", None),
    ("How many winters did Anne wait, eight or nine?", "Eight", None),
    ("How many years had passed since Anne refused Wentworth?", "Eight years had passed since Anne refused "
     "Wentworth.", None),
    ("Who fell at the Cobb, Louisa or Henrietta?", "Louisa", None),
    ("Where did the Crofts go after leaving Kellynch for Bath?", "Bath", None),
    ("In which year of the 1814 peace did the navy return?", "1814", None),
    ("Whose letter did Anne read, Wentworth's?", "Wentworth's", None),
    ("Did they walk or ride to Uppercross?", "walk", None),
    ("Why did the Curate's wife refuse to pay?", "She believed the estate owed her brother money.", None),
    (Q, Q, "answer_repeats_question"),
    ("Why did Anne refuse Wentworth?", "Anne refused Wentworth.", "answer_repeats_question"),
    ("What did the Admiral think of the house?", "The Admiral thought of the house.", "answer_repeats_question"),
    ("Why was the walk along the Cobb dangerous?", "The walk along the Cobb was dangerous.",
     "answer_repeats_question"),
    ("Where did the walk end?", "the walk", "answer_repeats_question"),
    ("Why did the Curate's wife refuse to pay the final payment on her father's estate?", "The Curate's wife "
     "refused to pay the final payment on her father's estate.", "answer_repeats_question"),
]


@pytest.mark.parametrize("question,answer,reason", RESTATEMENTS)
def test_restatement_table(question, answer, reason):
    got = check_pair(extract_qa(f"<question>{question}</question><answer>{answer}</answer>"), "short", "")
    assert got.reason == reason, got


@pytest.mark.parametrize("text,finish,reason,question,answer", UGLY_OUTPUTS)
def test_extraction_table(text, finish, reason, question, answer):
    got = extract_qa(text, finish)
    assert got.reason == reason, got
    if question is not None:
        assert got.question == question
    if reason is None:
        assert got.answer == answer
    elif answer is not None:
        assert got.answer == answer


def test_table_is_large_enough():
    assert len(UGLY_OUTPUTS) >= 25


def test_repairs_are_recorded():
    assert "mismatched_close" in extract_qa(f"<question>{Q}</answer><answer>{A}</answer>").notes
    assert "markdown_fence" in extract_qa(f"```\n<question>{Q}</question><answer>{A}</answer>\n```").notes
    several = extract_qa(f"<question>{Q}</question><answer>{A}</answer>" * 3)
    assert several.pairs == 3 and "several_pairs" in several.notes


def test_content_checks():
    ok = extract_qa(f"<question>{Q}</question><answer>{A}</answer>")
    assert check_pair(ok, "short", "Admiral Croft visited Kellynch Hall.").ok
    long_answer = extract_qa(f"<question>{Q}</question><answer>{' '.join(f'word{i}' for i in range(30))}</answer>")
    assert check_pair(long_answer, "short", "").reason == "short_answer_too_long"
    assert check_pair(long_answer, "normal", "").ok
    demo_q, demo_a = DEMO_PAIRS["short"]
    copied = extract_qa(f"<question>{demo_q}</question><answer>11 winters</answer>")
    assert check_pair(copied, "short", "Anne walked to Uppercross.").reason == "copied_demonstration"
    # a marker that is really in the chunk is no copy
    real = extract_qa("<question>Who rowed out to Garra Point?</question><answer>Mara Quill</answer>")
    assert check_pair(real, "short", DEMO_CHUNK).ok
    echo = extract_qa(f"<question>{Q}</question><answer>{Q}</answer>")
    assert check_pair(echo, "normal", "").reason == "answer_repeats_question"
    restated = extract_qa("<question>Why did the Curate's wife refuse to pay the final payment on her father's "
                          "estate?</question><answer>The Curate's wife refused to pay the final payment on her "
                          "father's estate.</answer>")
    assert check_pair(restated, "normal", "").reason == "answer_repeats_question"
    informative = extract_qa("<question>Why did the Curate's wife refuse to pay?</question><answer>She believed "
                             "the estate owed her brother money.</answer>")
    assert check_pair(informative, "normal", "").ok
    assert check_pair(extract_qa("<question>Did Anne stay?</question><answer>Yes.</answer>"), "short", "").ok
    prompt_echo = extract_qa("<question>You are given a text chunk taken from a long text. Write a question."
                             "</question><answer>Something about Bath.</answer>")
    assert check_pair(prompt_echo, "normal", "").reason == "echoed_prompt"
    loop = extract_qa("<question>What is the answer to this question?</question><answer>She had no idea of her "
                      "own destiny.</answer>")
    assert check_pair(loop, "normal", "").reason == "degenerate_question"
    partial_copy = extract_qa("<question>What did Maria desire?</question><answer>A lamp and her late father's "
                              "logbook.</answer>")
    assert check_pair(partial_copy, "short", "Maria desired a new bonnet.").reason == "copied_demonstration"


@pytest.mark.parametrize("text,verdict", [
    ("<verdict>yes</verdict><reason>It says so.</reason>", "yes"),
    ("<verdict> No. </verdict>\n<reason>The text never says that.</reason>", "no"),
    ("<Verdict>YES</Verdict>", "yes"),
    ("```\n<verdict>correct</verdict>\n```", "yes"),
    ("Yes, the answer is supported by the text.", "yes"),
    ("No - the chunk does not mention it.", "no"),
    ("<verdict>maybe</verdict><reason>unclear</reason>", None),
    ("The answer seems plausible but I cannot tell.", None),
    ("<verdict>", None),
    ("", None),
    (None, None),
])
def test_critique_verdicts(text, verdict):
    got = parse_critique(text)
    assert got.verdict == verdict
    if verdict is None:
        assert not got.parsed


def test_critique_keeps_reason():
    got = parse_critique("<verdict>no</verdict><reason>Wrong &amp; unsupported</reason>")
    assert got.reason == "Wrong & unsupported"


TAG_SOUP = st.lists(st.sampled_from([
    "<question>", "</question>", "<answer>", "</answer>", "<verdict>", "</verdict>", "<reason>", "</reason>",
    "<", ">", "&", "&amp;", "&#0;", "&#xD800;", "&#99999999;", "&nbsp;", "<![CDATA[", "]]>", "```", "\n\n",
    "<question", "</", "Who?", "yes", "no", " ", "\x00", "\ud7ff", "é", "<b>", "&bogus;",
]) | st.text(max_size=20), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=300), TAG_SOUP), finish=st.sampled_from([None, "stop", "length"]))
def test_extraction_handles_any_text_without_its_safety_net(text, finish):
    """extract_qa/parse_critique catch everything (a bug costs one record, not the run), so "never raises" is
    true by construction; what can fail is the parser itself: the safety net must never be what answered."""
    got = extract_qa(text, finish)
    assert not [n for n in got.notes if n.startswith("error:")], got.notes  # the parser raised inside
    assert got.ok or got.reason  # a rejection always says why
    if got.ok:
        assert got.question and got.answer
    verdict = parse_critique(text, finish)
    assert not [n for n in verdict.notes if n.startswith("error:")], verdict.notes
    assert verdict.verdict in (None, "yes", "no")


WORDS = st.sampled_from(["Anne", "Wentworth", "&", "AT&T", "3 < 5", "a>b", "café", "“quoted”", "it's", "?", "!",
                         "Lyme;", "50%", "x=1", "(aside)", "\u2014", "naïve", "Mr.", "\"said\"", "#1", "[note]"])
FIELD = st.lists(WORDS, min_size=1, max_size=12).map(" ".join)
PROSE = st.sampled_from(["", "Sure! Here it is:\n", "Based on the text, ", "```xml\n", "\n\n"])


@settings(max_examples=200, deadline=None)
@given(question=FIELD, answer=FIELD, before=PROSE, after=PROSE, spaces=st.sampled_from(["", " ", "\n", "\n\n  "]))
def test_clean_pairs_come_back_unchanged(question, answer, before, after, spaces):
    text = f"{before}<question>{spaces}{question}{spaces}</question>\n<answer>{spaces}{answer}{spaces}</answer>{after}"
    got = extract_qa(text, "stop")
    assert got.ok and got.question == question and got.answer == answer


SERVED = [  # (reply, finish_reason, expected reason): the misjudgments, as an OpenAI server sends them
    (f"<question>{Q}</question>\n<answer>Admiral Croft, who had taken the house and", "stop", "truncated"),
    (f"<question>{Q}</question>\n<answer>Admiral Croft, who had taken the house and", "length", "truncated"),
    (f"<question>{Q}</question>\n<answer>Admiral Croft took the house.", "stop", None),
    ("<question>Was Captain Wentworth in the navy?</question><answer>Yes, Captain Wentworth was in the navy."
     "</answer>", "stop", None),
    ("<question>Why did Anne refuse Wentworth?</question><answer>Anne refused Wentworth.</answer>", "stop",
     "answer_repeats_question"),
]


def test_served_replies_are_judged_like_the_table():
    """The same rules on replies that travel through the openai engine over HTTP (FaultInjectingServer: a fake
    OpenAI-compatible server that runs no model and sends the reply and finish_reason it is told to)."""
    from datafactory.config import GenerationConfig
    from datafactory.embedded import ensure_embedded_model
    from datafactory.engines import SamplingParams, build_engine, generate_sync
    from datafactory.testing.fault_server import FaultInjectingServer

    with FaultInjectingServer() as server:
        engine = build_engine(GenerationConfig(engine="openai", base_url=server.base_url, max_retries=0,
                                               tokenizer=str(ensure_embedded_model())))
        try:
            for reply, finish, reason in SERVED:
                server.configure(text=reply, finish_reason=finish)
                [res] = generate_sync(engine, [[{"role": "user", "content": "Write a question."}]], SamplingParams())
                assert res.ok and res.finish_reason == finish
                got = check_pair(extract_qa(res.text, res.finish_reason), "normal", "")
                assert got.reason == reason, (reply, got)
        finally:
            engine.close()


def test_decode_content_without_markup_or_entities_skips_the_parser_unchanged():
    """The shortcut for plain fields gives what the lxml path gives (random plain strings)."""
    import random

    import datafactory.extraction as ex

    def through_parser(raw: str) -> str:
        cleaned = ex._SIMPLE_MARKUP.sub("", raw)
        root = ex.etree.fromstring(f"<field>{cleaned}</field>".encode(), ex._PARSER)
        return ex._tidy("".join(root.itertext()))

    rng = random.Random(0)
    alphabet = list("ab Z\"'\n\t\r*:;#\x7f\x85\u2028\ufffd\u00e9\u4e2d") + ["Question:", "**", "Answer: ", "\r\n", "<b>"]
    checked = 0
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        if ex._NEEDS_PARSER.search(ex._SIMPLE_MARKUP.sub("", raw)):
            continue
        checked += 1
        assert ex.decode_content(raw) == through_parser(raw), repr(raw)
    assert checked > 500


def test_new_words_equal_the_all_pairs_comparison():
    """_new_words compares only words sharing four first characters: the same set as every pair compared."""
    import random

    from datafactory.extraction import _content_words, _new_words, _same_stem

    stems = ["rain", "rains", "rained", "refuse", "refused", "refusing", "pay", "payment", "paid", "ship",
             "shipping", "wentworth", "went", "letter", "letters", "let", "grove", "groves", "gr0ve", "it's",
             "captain", "capt", "cap", "elizabeth", "eliza", "1812", "181", "darcy", "dare"]
    rng = random.Random(3)
    for _ in range(3000):
        question = " ".join(rng.choice(stems) for _ in range(rng.randint(0, 8)))
        answer = " ".join(rng.choice(stems) for _ in range(rng.randint(0, 8)))
        asked = _content_words(question)
        expected = {w for w in _content_words(answer) if not any(_same_stem(w, q) for q in asked)}
        assert _new_words(question, answer) == expected, (question, answer)


def test_copies_demonstration_unchanged_by_its_shortcuts():
    from datafactory.prompts import DEMO_MARKERS, _normalize, copies_demonstration

    def reference(question: str, answer: str, chunk_text: str) -> bool:
        demo_texts = {_normalize(t) for pair in DEMO_PAIRS.values() for t in pair}
        if _normalize(question) in demo_texts or _normalize(answer) in demo_texts:
            return True
        pair = f"{question} {answer}".lower()
        return any(marker in pair and marker not in chunk_text.lower() for marker in DEMO_MARKERS)

    demo_q, demo_a = DEMO_PAIRS["normal"]
    cases = [(demo_q, "x", "chunk"), ("q", demo_a.upper(), "chunk"), ("Who kept the Logbook?", "Mara.", "no"),
             ("Who kept the logbook?", "Ann.", "The LOGBOOK lay open."), ("Who?", "Ann.", "lighthouse"),
             ("Where is Garra?", "Near the lighthouse.", "garra point, the lighthouse")]
    for question, answer, chunk in cases:
        assert copies_demonstration(question, answer, chunk) == reference(question, answer, chunk)
