"""The long QA training instance: the one record format datafactory writes (instances.jsonl and
instances.parquet) and finetune (`read_long`) and evaluation (the factory-qa task) read.

The writer builds every record through `LongQAInstance`, the readers validate every record through
`parse_instance`, so the two sides cannot drift apart silently; docs/instances.md is generated from this
model (`python3 -m longscale.common.instances`, checked by a test).

Trade-offs: validation is strict (no "3" for 3, no "yes" for true), so a damaged file is refused rather than
half-read; unknown extra fields are ignored, so a newer writer's additions do not break an older reader.
`id` must stay the first field: datafactory's output index reads an instance's id from the start of its
JSONL line instead of parsing the line (which holds the whole document twice).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

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


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:MAX_LISTED_ERRORS]:
        field = ".".join(str(p) for p in item["loc"]) or "(record)"
        got = "" if item["type"] == "missing" else f" (got {item['input']!r:.60})"
        parts.append(f"field '{field}': {item['msg']}{got}")
    more = error.error_count() - MAX_LISTED_ERRORS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse_instance(where: str, record: Any, error: type[Exception] = ValueError) -> LongQAInstance:
    """`record` validated as a long QA instance; a bad one raises `error` naming `where` and the field."""
    if not isinstance(record, dict):
        raise error(f"{where}: not a long QA instance: expected an object, got {type(record).__name__}")
    try:
        return LongQAInstance.model_validate(record)
    except ValidationError as exc:
        raise error(f"{where}: not a long QA instance: {_describe(exc)}") from None


def _json_type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_json_type(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " or ".join(f'"{value}"' for value in schema["enum"])
    if "$ref" in schema:
        return "{role, content}"
    kind = {"string": "string", "integer": "int", "boolean": "bool", "null": "null"}.get(schema.get("type", ""))
    if schema.get("type") == "array":
        item = _json_type(schema.get("items", {}))
        if schema.get("minItems") == schema.get("maxItems") == 2:
            return f"[{item}, {item}]"
        return f"list of {item}"
    if kind is None:
        raise TypeError(f"no rendering for {schema}")
    bounds = [f">= {schema['minimum']}" if "minimum" in schema else "",
              "non-empty" if schema.get("minLength") else ""]
    return " ".join([kind, *filter(None, bounds)])


def contract_table() -> str:
    """The instance fields as a Markdown table (docs/instances.md holds this, checked by a test)."""
    schema = LongQAInstance.model_json_schema()
    turn = schema["$defs"]["ChatTurn"]["properties"]
    rows = ["| field | type | meaning |", "|---|---|---|"]
    for name, prop in schema["properties"].items():
        rows.append(f"| `{name}` | {_json_type(prop)} | {prop['description']} |")
    rows.append("")
    rows.append(f"A turn is `{{role: {_json_type(turn['role'])}, content: {_json_type(turn['content'])}}}`. "
                "Every field is required (null only where the type says so); "
                "readers ignore fields not listed here.")
    return "\n".join(rows)


if __name__ == "__main__":
    print(contract_table())
