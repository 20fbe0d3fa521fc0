"""EvalConfig: the one settings model behind `longscale eval`, its YAML file and `run_eval()`."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from datafactory.config import EngineSettings
from longscale.common.text import parse_lengths

TaskName = Literal["ruler-squad", "ruler-hotpot", "ruler-squad-gold", "ruler-hotpot-gold", "factory-qa", "narrativeqa",
                   "qasper", "quality", "qmsum", "zeroscrolls"]
TASKS: tuple[str, ...] = get_args(TaskName)


class EvalConfig(EngineSettings):
    """`longscale eval`: the engine and sampling knobs are datafactory's (one spelling), greedy by default."""

    task: TaskName = Field(description="ruler-squad, ruler-hotpot, ruler-squad-gold, ruler-hotpot-gold (the same "
                           "questions with only their gold paragraph: the short-context check), factory-qa, "
                           "narrativeqa, qasper, quality, qmsum or zeroscrolls")
    data: str | None = Field(None, description="task file or folder (RULER: squad.json / hotpotqa.json; factory-qa: "
                             "a generation output folder)")
    output: str = Field(description="folder for results.json, results.md, records.jsonl and score_by_length.png")
    lengths: list[int] = Field([4096, 8192, 16384, 32768],
                               description="context lengths in tokens (prompt + answer), e.g. 4k,8k,16k,32k")
    num_samples: int = Field(20, ge=1, description="questions per length (RULER: the same questions at every length)")
    prompt_style: Literal["chat", "plain"] = Field("chat", description="chat: context, instruction and question in "
                                                   "one user turn; plain: the paper's '{CONTEXT} Q: {QUESTION}, A:'")
    few_shot: int = Field(0, ge=0, description="few-shot examples taken from the task file (their contexts cut to "
                          "the last 200 tokens); not for RULER tasks")
    metric: str | None = Field(None, description="override the task's primary metric (f1, exact_match, "
                               "substring_match, rouge_gm, accuracy)")
    answer_scope: Literal["whole", "first_line"] = Field("whole", description="what F1 and exact match read: the "
                                                         "whole answer (every benchmark's script) or its first "
                                                         "non-empty line (the paper's rule)")
    max_new_tokens: int = Field(32, ge=1, description="answer budget (part of each length)")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="sampling temperature (0 = greedy)")
    concurrency: int = Field(16, ge=1, le=4096, description="requests in flight (openai engine)")
    filler: Literal["distractors", "essays"] = Field("distractors", description="RULER haystack: other paragraphs "
                                                     "of the dataset, or Paul Graham essays (needs --essays)")
    essays: str | None = Field(None, description="PaulGrahamEssays.json for --filler essays")
    depths: list[float] | None = Field(None, description="gold depths in [0, 1] cycled over samples (default: spread "
                                       "evenly)")
    seed: int = Field(0, description="seed for question choice and haystacks")
    label: str | None = Field(None, description="model label in tables and plots (default: the model folder name)")

    @field_validator("lengths", mode="before")
    @classmethod
    def _lengths(cls, value: object) -> object:
        return parse_lengths(value) if isinstance(value, (str, list)) else value

    @field_validator("depths")
    @classmethod
    def _depths(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0 <= d <= 1 for d in value):
            raise ValueError("depths must lie in [0, 1]")
        return value

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if not self.data:
            raise ValueError(f"--task {self.task} needs --data (the task file or folder)")
        if self.engine == "openai" and not (self.tokenizer or (self.model and "/" in self.model)):
            raise ValueError("--engine openai needs --tokenizer (a local tokenizer folder) to fit prompts to --lengths")
        if self.few_shot and self.task.startswith("ruler"):
            raise ValueError("--few-shot is for task files, not RULER tasks")
        if min(self.lengths) <= self.max_new_tokens:
            raise ValueError(f"every length must exceed --max-new-tokens ({self.max_new_tokens})")
        return self
