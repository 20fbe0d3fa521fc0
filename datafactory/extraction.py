"""Pull <question>/<answer> out of free model text (critique.py reads <verdict>/<reason> with the same scanner).
Never raises.

Model output is not XML: prose around the tags, markdown fences, several pairs, bare `&` and `<`, HTML
entities, CDATA, unclosed, duplicated or mismatched tags (`<question>...</answer>`), cut-off ends. So the
tag *structure* is recovered by a small scanner that only knows our tag names and repairs what it can
(each repair is noted), and each field's *content* is decoded by lxml (entities, character references,
CDATA) after escaping what would break it. Every rejection carries a machine-readable reason:

  empty_output, no_question, no_answer, empty, truncated, short_answer_too_long, copied_demonstration,
  answer_repeats_question, echoed_prompt, degenerate_question, critique_rejected, critique_unparseable, engine_error (the
  last three are set by the pipeline).
"""
from __future__ import annotations

import html.entities
import re
from dataclasses import dataclass

from lxml import etree

SHORT_ANSWER_MAX_WORDS = 15

_FENCE = re.compile(r"^[ \t]*```[\w+-]*[ \t]*$", re.MULTILINE)
_CDATA = re.compile(r"<!\[CDATA\[(.*?)(?:\]\]>|$)", re.DOTALL)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ENTITY = re.compile(r"&(#[0-9]{1,7};|#[xX][0-9a-fA-F]{1,6};|[A-Za-z][A-Za-z0-9]{1,31};)")
_SIMPLE_MARKUP = re.compile(r"</?[A-Za-z][\w-]*\s*/?>")
_LABEL = re.compile(r"^\s*(?:\*\*)?\s*(?:(?i:question|answer)\s*(?:\d+\s*)?[:.)-]|[QA]\s*\d*\s*:)\s*(?:\*\*)?\s*")
_XML_ENTITIES = {"amp", "lt", "gt", "quot", "apos"}
_PARSER = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, huge_tree=True)


@dataclass(frozen=True)
class Segment:
    name: str
    raw: str
    closed: bool


@dataclass(frozen=True)
class Extraction:
    question: str | None
    answer: str | None
    reason: str | None = None  # None: a usable pair
    pairs: int = 0             # complete question->answer pairs seen
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reason is None


def _tag_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"<\s*(/?)\s*(" + "|".join(names) + r")\b[^<>]{0,80}?>", re.IGNORECASE)


_QA_TAGS = _tag_pattern(("question", "answer"))


def _prepare(text: str, notes: list[str]) -> str:
    text = _CONTROL.sub("", text)
    if _FENCE.search(text):
        text = _FENCE.sub("", text)
        notes.append("markdown_fence")
    if "<![CDATA[" in text:
        text = _CDATA.sub(lambda m: m.group(1).replace("&", "&amp;").replace("<", "&lt;"), text)
        notes.append("cdata")
    return text


def scan_segments(text: str, pattern: re.Pattern[str], notes: list[str]) -> list[Segment]:
    """Recover (name, content) segments from tag soup, repairing unclosed, duplicated and mismatched tags."""
    segments: list[Segment] = []
    open_name: str | None = None
    content_start = 0
    last_end = 0
    for match in pattern.finditer(text):
        closing, name = match.group(1) == "/", match.group(2).lower()
        if not closing:
            if open_name is not None:
                if name == open_name and not text[content_start:match.start()].strip():
                    notes.append("duplicated_tag")
                    content_start = match.end()
                    continue
                notes.append(f"unclosed_{open_name}")
                segments.append(Segment(open_name, text[content_start:match.start()], closed=False))
            open_name, content_start = name, match.end()
        elif open_name is not None:
            if name != open_name:
                notes.append("mismatched_close")
            segments.append(Segment(open_name, text[content_start:match.start()], closed=True))
            open_name = None
        else:  # a closer with no opener: take the text since the previous tag (its last paragraph)
            before = text[last_end:match.start()]
            if segments and segments[-1].name == name and not before.strip():
                notes.append("duplicated_tag")
            elif before.strip():
                notes.append(f"missing_open_{name}")
                segments.append(Segment(name, before.rsplit("\n\n", 1)[-1], closed=True))
        last_end = match.end()
    if open_name is not None:
        segments.append(Segment(open_name, text[content_start:], closed=False))
    return segments


def _entity_to_xml(match: re.Match[str]) -> str:
    body = match.group(1)
    name = body[:-1]
    if body.startswith("#") or name in _XML_ENTITIES:
        return match.group(0)
    codepoint = html.entities.name2codepoint.get(name)
    return f"&#{codepoint};" if codepoint else "&amp;" + body


# entities, angle brackets and characters XML 1.0 forbids: only these make lxml's text differ from the input
_NEEDS_PARSER = re.compile("[&<>\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def decode_content(raw: str) -> str:
    """Field text: markup stripped, entities decoded by lxml, whitespace collapsed; never raises."""
    cleaned = _SIMPLE_MARKUP.sub("", raw)
    if not _NEEDS_PARSER.search(cleaned):  # nothing lxml would change (0.2 ms saved a field)
        return _tidy(cleaned)
    parts, pos = [], 0
    for match in _ENTITY.finditer(cleaned):  # keep entities, escape every other "&"
        parts += [cleaned[pos:match.start()].replace("&", "&amp;"), _entity_to_xml(match)]
        pos = match.end()
    parts.append(cleaned[pos:].replace("&", "&amp;"))
    escaped = "".join(parts).replace("<", "&lt;").replace(">", "&gt;")
    try:
        root = etree.fromstring(f"<field>{escaped}</field>".encode(), _PARSER)
        decoded = "".join(root.itertext()) if root is not None else None
    except (etree.XMLSyntaxError, ValueError):
        decoded = None
    if decoded is None:  # lxml refused (e.g. an invalid character reference): fall back to the stdlib
        decoded = html.unescape(cleaned)
    return _tidy(decoded)


def _tidy(decoded: str) -> str:
    """Whitespace collapsed, a leading label ("Question:") and emphasis stars dropped."""
    decoded = re.sub(r"\s+", " ", decoded).strip()
    decoded = _LABEL.sub("", decoded, count=1).strip()
    return decoded.strip("*").strip()


def _pairs(segments: list[Segment]) -> list[tuple[Segment, Segment]]:
    pairs, question = [], None
    for seg in segments:
        if seg.name == "question":
            question = seg
        elif seg.name == "answer" and question is not None:
            pairs.append((question, seg))
            question = None
    return pairs


def extract_qa(text: str | None, finish_reason: str | None = None) -> Extraction:
    """The first complete question/answer pair in `text`, or the reason why there is none."""
    notes: list[str] = []
    try:
        return _extract_qa(text, finish_reason, notes)
    except Exception as exc:  # a bug here must cost one record, never the run
        return Extraction(None, None, "unparseable", 0, tuple(notes) + (f"error:{type(exc).__name__}",))


def _extract_qa(text: str | None, finish_reason: str | None, notes: list[str]) -> Extraction:
    if not text or not text.strip():
        return Extraction(None, None, "empty_output")
    cut_off = finish_reason == "length"
    segments = scan_segments(_prepare(text, notes), _QA_TAGS, notes)
    questions = [s for s in segments if s.name == "question"]
    answers = [s for s in segments if s.name == "answer"]
    pairs = _pairs(segments)
    if not pairs and questions and answers:
        notes.append("answer_before_question")
        pairs = [(questions[0], answers[0])]
    if not pairs:
        if cut_off:
            return Extraction(_first_text(questions), None, "truncated", 0, tuple(notes))
        return Extraction(_first_text(questions), _first_text(answers), "no_question" if not questions else "no_answer",
                          0, tuple(notes))
    for question_seg, answer_seg in pairs:
        answer_raw = answer_seg.raw
        if not answer_seg.closed:  # ended without </answer>: its first paragraph, if that is plainly complete
            first, *rest = answer_raw.strip().split("\n\n", 1)
            answer_raw = first
            question, answer = decode_content(question_seg.raw), decode_content(answer_raw)
            if (cut_off and not rest) or not plainly_complete(answer):  # a cut inside the answer
                notes.append("unclosed_answer_incomplete")
                return Extraction(question or None, answer or None, "truncated", len(pairs), tuple(notes))
        question, answer = decode_content(question_seg.raw), decode_content(answer_raw)
        if question and answer:
            if not answer_seg.closed:
                notes.append("unclosed_answer")
            if len(pairs) > 1:
                notes.append("several_pairs")
            return Extraction(question, answer, None, len(pairs), tuple(notes))
    question, answer = decode_content(pairs[0][0].raw), decode_content(pairs[0][1].raw)
    return Extraction(question or None, answer or None, "empty", len(pairs), tuple(notes))


SHORT_FRAGMENT_WORDS = 5
_SENTENCE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]]*$")
_BRACKETS = (("(", ")"), ("[", "]"), ("{", "}"), ("\u201c", "\u201d"))
_DANGLING = frozenset("the a an and or but of to in on at for with by from as that which who whose whom because "
                      "since while although though if than then so nor was were is are be been had has have did "
                      "does do its her his their my our your this these those".split())
_CLAUSE_AFTER_COMMA = re.compile(r",\s*(?:who|whom|whose|which|that|because|since|while|although|though|when|where|"
                                 r"but|and|so|if|as)\b", re.IGNORECASE)


def plainly_complete(answer: str) -> bool:
    """Whether an answer whose </answer> never came is whole: brackets and double quotes balanced, and either
    a sentence end (. ! ? or an ellipsis, closing quotes/brackets allowed) or a short phrase (at most five words,
    not ending on a function word, comma or dash, no clause opened after a comma): "Admiral Croft" is whole,
    "Admiral Croft, who had taken the house and" is not. The trade-off: a long answer without final
    punctuation is dropped even when it was complete (an unclosed tag already marks the output as rough)."""
    text = answer.strip()
    if not text or text.count('"') % 2 or any(text.count(o) != text.count(c) for o, c in _BRACKETS):
        return False
    if _SENTENCE_END.search(text):
        return True
    words = re.findall(r"[\w'\u2019-]+", text)
    return (0 < len(words) <= SHORT_FRAGMENT_WORDS and not re.search(r"[,;:\u2014\u2013-]$", text)
            and words[-1].lower() not in _DANGLING and not _CLAUSE_AFTER_COMMA.search(text))


def _first_text(segments: list[Segment]) -> str | None:
    for seg in segments:
        value = decode_content(seg.raw)
        if value:
            return value
    return None


def check_pair(extraction: Extraction, answer_type: str, chunk_text: str) -> Extraction:
    """Content checks after extraction: short answers must be short; copies of the worked example go."""
    if not extraction.ok:
        return extraction
    from datafactory.prompts import copies_demonstration

    reason = None
    if copies_demonstration(extraction.question or "", extraction.answer or "", chunk_text):
        reason = "copied_demonstration"
    elif answer_type == "short" and len((extraction.answer or "").split()) > SHORT_ANSWER_MAX_WORDS:
        reason = "short_answer_too_long"
    elif _restates(extraction.question or "", extraction.answer or ""):
        reason = "answer_repeats_question"
    elif any(phrase in (extraction.question or "").lower() for phrase in _PROMPT_PHRASES):
        reason = "echoed_prompt"
    elif _DEGENERATE_QUESTION.search(extraction.question or ""):
        reason = "degenerate_question"
    if reason is None:
        return extraction
    return Extraction(extraction.question, extraction.answer, reason, extraction.pairs, extraction.notes)


_PROMPT_PHRASES = ("text chunk", "delimited by triple quotes", "wrap the question", "xml tags",
                   "reading comprehension test")
_DEGENERATE_QUESTION = re.compile(r"\banswer to (?:the|this|that|your) question\b", re.IGNORECASE)
_STOPWORDS = frozenset("the a an and or of to in on at for with by from was were is are be been had has have did "
                       "does do what who whom whose why how when where which that this these those it its her his "
                       "their she he they them him not".split())


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOPWORDS and len(w) > 2}


_POLAR = frozenset("yes no yeah nope correct incorrect true false indeed not never".split())
_NUMBER_WORDS = frozenset("zero one two three four five six seven eight nine ten eleven twelve twenty thirty forty "
                          "fifty hundred thousand million first second third fourth fifth sixth seventh eighth ninth "
                          "tenth once twice half".split())


def _same_stem(a: str, b: str) -> bool:
    """Crude inflection match: refuse/refused/refusing share a stem, pay/payment do not."""
    n = len(a) if a == b else next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a == b or (n >= 4 and n >= min(len(a), len(b)) - 3)


def _new_words(question: str, answer: str) -> set[str]:
    """The answer's content words that are no inflection of a question's word. Two words of one stem share
    their first four characters (or are equal), so only the question's words with the same four are compared:
    the same set as comparing every pair, without the quadratic Python loop."""
    by_prefix: dict[str, list[str]] = {}
    for word in _content_words(question):
        by_prefix.setdefault(word[:4], []).append(word)
    return {w for w in _content_words(answer) if not any(_same_stem(w, q) for q in by_prefix.get(w[:4], ()))}


def _factual(word: str, answer: str, first_word_counts: bool = False) -> bool:
    """A number, or a name: capitalised in the answer (as its first word only if `first_word_counts`)."""
    if any(ch.isdigit() for ch in word) or word in _NUMBER_WORDS:
        return True
    before = r"\b" if first_word_counts else r"(?<=\S)\s+"
    return bool(re.search(before + re.escape(word[:1].upper() + word[1:]) + r"\b", answer))


def _restates(question: str, answer: str) -> bool:
    """The answer only repeats the question's words. Never for an answer opening with yes/no (it answers a
    polar question however much it repeats), nor for a short answer that is a number, a name or one of the
    question's alternatives ("X or Y?"); a longer answer restates when it adds no word beyond inflections of
    the question's, or only one that is neither a number nor a name."""
    words = re.findall(r"\w+", answer)
    if not words or words[0].lower() in _POLAR:
        return False
    new = _new_words(question, answer)
    if len(words) < 4:
        if new or not _content_words(answer) or re.search(r"\bor\b", question, re.IGNORECASE):
            return False
        return not all(_factual(w, answer, first_word_counts=True) for w in _content_words(answer))
    return not new or (len(new) == 1 and not _factual(next(iter(new)), answer))
