"""The two record formats datafactory writes, each one typed model both sides use:

- `LongQAInstance`: the long QA training instance (instances.jsonl, instances.parquet), which finetune
  (`read_long`) and evaluation (the factory-qa task) read. The writer builds every record through it, the
  readers validate every record through `parse_instance`.
- `QAPair`: every generated question/answer pair, accepted or not, with its reject reason (qa.jsonl,
  qa.parquet). The output writer passes every record through `qa_pair_record` (which also refuses a field the
  model does not declare, so the pipeline cannot add one silently); readers validate through `parse_qa_pair`.

So the two sides cannot drift apart silently; docs/instances.md is generated from these models
(`python3 -m longscale.common.instances`, checked by a test).

Trade-offs: validation is strict (no "3" for 3, no "yes" for true), so a damaged file is refused rather than
half-read; unknown extra fields are ignored, so a newer writer's additions do not break an older reader.
`id` must stay the first field: datafactory's output index reads an instance's id from the start of its
JSONL line instead of parsing the line (which holds the whole document twice).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Span = Annotated[list[int], Field(min_length=2, max_length=2)]
MAX_LISTED_ERRORS = 3


class ChatTurn(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class LongQAInstance(BaseModel):
    """One long QA training instance (one accepted question/answer pair around its document)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: str = Field(min_length=1, description="the QA pair's id (the same id as its record in qa.jsonl)")
    doc_id: str = Field(min_length=1, description="id of the source document")
    chunk_index: int = Field(ge=0, description="index of the source chunk in the document's chunking")
    answer_type: Literal["normal", "short"] = Field(description="the paper's Figure 10 template used")
    messages: list[ChatTurn] = Field(description="chat turns: the user turn holds the template with the kept "
                                                 "document between triple quotes and the question; the "
                                                 "assistant turn is the answer")
    text: str = Field(description="the Llama-2 [INST] rendering of the same turns")
    question: str = Field(min_length=1, description="the question alone")
    answer: str = Field(min_length=1, description="the answer alone")
    truncated: bool = Field(description="whether the document was cut to fit max_context")
    document_tokens: int | None = Field(ge=0, description="target-tokenizer tokens of the whole document; null "
                                                          "when only a region around the chunk was tokenized")
    kept_token_span: Span | None = Field(description="[start, end) token span of the kept text in the "
                                                     "document; null when the token offset is unknown")
    kept_char_span: Span = Field(description="[start, end) character span of the kept text in the document")
    chunk_char_span: Span = Field(description="[start, end) character span of the source chunk")
    approx_tokens: int = Field(ge=1, description="target-tokenizer tokens of the whole instance (approximate: "
                                                 "the chat template may add a few)")
    model: str | None = Field(description="the generator model that wrote the pair")

    @model_validator(mode="after")
    def _consistent(self) -> LongQAInstance:
        roles = [turn.role for turn in self.messages]
        if "user" not in roles or "assistant" not in roles:
            raise ValueError(f"messages need a user and an assistant turn (roles: {roles})")
        for name in ("kept_token_span", "kept_char_span", "chunk_char_span"):
            span = getattr(self, name)
            if span is not None and not 0 <= span[0] <= span[1]:
                raise ValueError(f"{name} {span} is not a [start, end) span")
        return self

    def chat(self) -> list[dict[str, str]]:
        """The turns as plain {role, content} dicts (what a chat template takes)."""
        return [{"role": turn.role, "content": turn.content} for turn in self.messages]

    def kept_document(self) -> str | None:
        """The kept document text from the user turn (between the template's triple quotes), if present."""
        user = next(turn.content for turn in self.messages if turn.role == "user")
        parts = user.split('"""')
        return parts[1].strip() if len(parts) >= 3 else None

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record as written to instances.jsonl (fields in declaration order, `id` first)."""
        return self.model_dump()


RejectReason = Literal[
    "engine_error", "empty_output", "no_question", "no_answer", "empty", "truncated", "unparseable",
    "short_answer_too_long", "copied_demonstration", "answer_repeats_question", "echoed_prompt",
    "degenerate_question", "critique_rejected", "critique_unparseable", "chunk_exceeds_context"]
REJECT_REASONS: tuple[str, ...] = get_args(RejectReason)


class Critique(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    verdict: Literal["yes", "no"] | None
    reason: str | None
    raw: str | None


class QAPair(BaseModel):
    """One generated question/answer pair, accepted or not (a line of qa.jsonl, a row of qa.parquet)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: str = Field(min_length=1, description="deterministic id: sha256(doc_id, chunk_index, answer_type, seed); "
                                              "its instance has the same id")
    doc_id: str = Field(min_length=1, description="id of the source document")
    chunk_index: int = Field(ge=0, description="index of the chunk in the document's chunking")
    chunk_token_span: Span | None = Field(description="[start, end) token span of the chunk; null when the "
                                                      "document was tokenized only around the chunk")
    chunk_char_span: Span = Field(description="[start, end) character span of the chunk in the document")
    chunk_tokens: int = Field(ge=0, description="generator-tokenizer tokens of the chunk")
    answer_type: Literal["normal", "short"] = Field(description="the paper's Figure 9 prompt used")
    prompt_mode: Literal["zero-shot", "demonstration"] = Field(description="demonstration: the prompt held one "
                                                                           "worked example")
    question: str | None = Field(description="the extracted question; null when none was found")
    answer: str | None = Field(description="the extracted answer; null when none was found")
    critique: Critique | None = Field(description="the self-critique's verdict and reason and its raw reply; "
                                                  "null when critique is off or was not reached")
    accepted: bool = Field(description="whether the pair became a long instance")
    reject_reason: RejectReason | None = Field(description="why it was rejected; null when accepted")
    model: str | None = Field(description="the generator model")
    raw: str | None = Field(description="the model's output as returned")
    finish_reason: str | None = Field(description="the engine's finish reason (stop, length, ...)")
    extraction_notes: list[str] = Field(description="repairs the extractor applied (unclosed tags, ...)")
    pairs_found: int = Field(ge=0, description="question/answer pairs found in the output")
    engine_error: str | None = Field(description="the engine's error when the request failed (such a record "
                                                 "is generated again on resume)")

    @model_validator(mode="after")
    def _consistent(self) -> QAPair:
        if self.accepted and self.reject_reason is not None:
            raise ValueError(f"an accepted pair has no reject_reason (got {self.reject_reason!r})")
        if not self.accepted and self.reject_reason is None:
            raise ValueError("a pair that is not accepted needs a reject_reason")
        if self.accepted and not (self.question and self.answer):
            raise ValueError("an accepted pair needs a question and an answer")
        for name in ("chunk_token_span", "chunk_char_span"):
            span = getattr(self, name)
            if span is not None and not 0 <= span[0] <= span[1]:
                raise ValueError(f"{name} {span} is not a [start, end) span")
        return self

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record as written to qa.jsonl (fields in declaration order, `id` first)."""
        return self.model_dump()


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:MAX_LISTED_ERRORS]:
        field = ".".join(str(p) for p in item["loc"]) or "(record)"
        got = "" if item["type"] == "missing" else f" (got {item['input']!r:.60})"
        parts.append(f"field '{field}': {item['msg']}{got}")
    more = error.error_count() - MAX_LISTED_ERRORS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


Model = TypeVar("Model", bound=BaseModel)


def _parse(model: type[Model], what: str, where: str, record: Any, error: type[Exception]) -> Model:
    if not isinstance(record, dict):
        raise error(f"{where}: not {what}: expected an object, got {type(record).__name__}")
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        raise error(f"{where}: not {what}: {_describe(exc)}") from None


def parse_instance(where: str, record: Any, error: type[Exception] = ValueError) -> LongQAInstance:
    """`record` validated as a long QA instance; a bad one raises `error` naming `where` and the field."""
    return _parse(LongQAInstance, "a long QA instance", where, record, error)


def parse_qa_pair(where: str, record: Any, error: type[Exception] = ValueError) -> QAPair:
    """`record` validated as a QA pair record; a bad one raises `error` naming `where` and the field."""
    return _parse(QAPair, "a QA pair record", where, record, error)


def qa_pair_record(record: dict[str, Any], error: type[Exception] = ValueError) -> dict[str, Any]:
    """The line the writer puts in qa.jsonl for `record`: validated, in the model's field order; a field the
    model does not declare is refused too (readers ignore unknown fields; the writer must not invent them)."""
    where = f"QA pair {record.get('id')!r}" if isinstance(record, dict) else "QA pair"
    pair = parse_qa_pair(where, record, error)
    unknown = sorted(set(record) - set(QAPair.model_fields))
    if unknown:
        raise error(f"{where}: fields not in the QA pair contract: {', '.join(unknown)} "
                    "(declare them in longscale/common/instances.py QAPair)")
    return pair.to_record()


MAX_LISTED_CHOICES = 4  # an enum with more choices is listed under the table


def _json_type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_json_type(option, defs) for option in schema["anyOf"])
    if "enum" in schema:
        if len(schema["enum"]) > MAX_LISTED_CHOICES:
            return "a reason listed below"
        return " or ".join(f'"{value}"' for value in schema["enum"])
    if "$ref" in schema:
        return "{" + ", ".join(defs[schema["$ref"].rpartition("/")[2]]["properties"]) + "}"
    kind = {"string": "string", "integer": "int", "boolean": "bool", "null": "null"}.get(schema.get("type", ""))
    if schema.get("type") == "array":
        item = _json_type(schema.get("items", {}), defs)
        if schema.get("minItems") == schema.get("maxItems") == 2:
            return f"[{item}, {item}]"
        return f"list of {item}"
    if kind is None:
        raise TypeError(f"no rendering for {schema}")
    bounds = [f">= {schema['minimum']}" if "minimum" in schema else "",
              "non-empty" if schema.get("minLength") else ""]
    return " ".join([kind, *filter(None, bounds)])


def _field_rows(model: type[BaseModel]) -> tuple[list[str], dict[str, Any]]:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    rows = ["| field | type | meaning |", "|---|---|---|"]
    for name, prop in schema["properties"].items():
        rows.append(f"| `{name}` | {_json_type(prop, defs)} | {prop['description']} |")
    return rows, defs


def contract_table() -> str:
    """The instance fields as a Markdown table (docs/instances.md holds this, checked by a test)."""
    rows, defs = _field_rows(LongQAInstance)
    turn = defs["ChatTurn"]["properties"]
    rows.append("")
    rows.append(f"A turn is `{{role: {_json_type(turn['role'], defs)}, content: {_json_type(turn['content'], defs)}}}`. "
                "Every field is required (null only where the type says so); "
                "readers ignore fields not listed here.")
    return "\n".join(rows)


def qa_contract_table() -> str:
    """The QA pair fields as a Markdown table and the reject reasons (docs/instances.md holds this)."""
    rows, defs = _field_rows(QAPair)
    verdict = defs["Critique"]["properties"]
    rows.append("")
    rows.append(f"`critique` is `{{verdict: {_json_type(verdict['verdict'], defs)}, reason: "
                f"{_json_type(verdict['reason'], defs)}, raw: {_json_type(verdict['raw'], defs)}}}`. "
                "`reject_reason` is one of: " + ", ".join(f"`{r}`" for r in REJECT_REASONS) + ". "
                "Every field is required (null only where the type says so); an accepted pair has a question, "
                "an answer and no reject_reason, any other pair has a reject_reason; readers ignore fields not "
                "listed here.")
    return "\n".join(rows)


if __name__ == "__main__":
    print(contract_table())
    print()
    print(qa_contract_table())
