"""Self-critique outcomes and the target tokenizer, through the real pipeline with a scripted engine.

`ScriptedEngine` is a fake by design (named as such): the critique's rejected / unparseable / failed outcomes
must be produced on demand, which a real model does not do. Tokenizers are real: the embedded model's as the
generator's, and a byte-level one (built here, one token per byte) as a *different* target tokenizer.
"""
from __future__ import annotations

import pytest

from datafactory.config import GenerationConfig
from datafactory.critique import CRITIQUE_PROMPT
from datafactory.documents import Document, sample_corpus_dir
from datafactory.engines.base import EngineResult
from datafactory.output import read_jsonl
from datafactory.pipeline import Tokenizers, load_tokenizers, run_generation

# what the critique of the pair about document k says: k=0 yes, 1 no, 2 nothing readable, 3 the request fails
CRITIQUES = ["<verdict>yes</verdict><reason>The text names her.</reason>",
             "<verdict>no</verdict><reason>She is not in this passage.</reason>",
             "Hmm, that is a difficult one to decide.",
             None]
OUTCOMES = [(True, None), (False, "critique_rejected"), (False, "critique_unparseable"), (False, "engine_error")]


class ScriptedEngine:
    """A fake engine: one fixed pair per document, and the critique reply CRITIQUES[k] for document k."""

    name = model_name = "scripted"

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def agenerate(self, conversations, params):
        return [self._reply(conv[-1]["content"]) for conv in conversations]

    def _reply(self, prompt: str) -> EngineResult:
        k = next((i for i in range(len(CRITIQUES)) if f"Marker{i} " in prompt), 0)  # a later chunk: as doc 0
        if not prompt.startswith(CRITIQUE_PROMPT):
            self.calls.append("qa")
            return EngineResult(text="<question>Who is the heroine of this passage?</question>\n<answer>Elizabeth"
                                     "</answer>", finish_reason="stop")
        self.calls.append("critique")
        if CRITIQUES[k] is None:
            return EngineResult(text=None, error="http_500: scripted failure")
        return EngineResult(text=CRITIQUES[k], finish_reason="stop")

    def close(self) -> None:
        pass


def marked_docs(n: int, chars: int = 900) -> list[Document]:
    text = (sample_corpus_dir() / "prideprejudice.txt").read_text()
    return [Document(f"doc-{k}", f"Marker{k} " + text[30_000 + 5_000 * k:30_000 + 5_000 * k + chars])
            for k in range(n)]


@pytest.fixture(scope="module")
def generator_tokenizers(embedded_model_dir) -> Tokenizers:
    return load_tokenizers(GenerationConfig(model=str(embedded_model_dir)))


@pytest.fixture(scope="module")
def byte_tokenizer_dir(tmp_path_factory):
    """A real, different tokenizer: byte-level BPE with no merges (one token per byte, ~4x SmolLM2's count)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(sorted(alphabet))}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    path = tmp_path_factory.mktemp("byte-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=core, eos_token="</s>", pad_token="</s>").save_pretrained(path)
    return path


def config(**kw) -> GenerationConfig:
    return GenerationConfig(**{"chunk_tokens": 300, "chunks_per_doc": 1, "min_doc_tokens": 50, "max_context": 2048,
                               "critique": "filter", "prompt_mode": "zero-shot", "batch_size": 4} | kw)


def test_critique_outcomes_accept_reject_unparseable_and_failed(tmp_path, generator_tokenizers):
    engine = ScriptedEngine()
    manifest = run_generation(marked_docs(4), config(), tmp_path, engine=engine, progress=False,
                              tokenizers=generator_tokenizers)
    assert engine.calls.count("qa") == 4 and engine.calls.count("critique") == 4
    records = {r["doc_id"]: r for r in read_jsonl(tmp_path / "qa.jsonl")}
    for k, (accepted, reason) in enumerate(OUTCOMES):
        record = records[f"doc-{k}"]
        assert (record["accepted"], record["reject_reason"]) == (accepted, reason), record
    assert records["doc-1"]["critique"] == {"verdict": "no", "reason": "She is not in this passage.",
                                            "raw": CRITIQUES[1]}
    assert records["doc-2"]["critique"]["verdict"] is None
    assert records["doc-3"]["engine_error"] == "critique: http_500: scripted failure"
    instances = list(read_jsonl(tmp_path / "instances.jsonl"))
    assert [i["doc_id"] for i in instances] == ["doc-0"]  # only the verified pair becomes a long instance
    start, end = instances[0]["chunk_char_span"]
    assert marked_docs(1)[0].text[start:end] in instances[0]["messages"][0]["content"]
    assert manifest["counts"]["accepted"] == 1
    assert manifest["rejection_reasons"] == {"critique_rejected": 1, "critique_unparseable": 1, "engine_error": 1}


def test_a_different_target_tokenizer_sets_the_instance_budget(tmp_path, generator_tokenizers, embedded_model_dir,
                                                              byte_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizers = load_tokenizers(config(model=str(embedded_model_dir), target_tokenizer=str(byte_tokenizer_dir)))
    assert not tokenizers.same
    run_generation(marked_docs(1, chars=4000), config(max_context=1600), tmp_path, engine=ScriptedEngine(),
                   progress=False, tokenizers=tokenizers)
    [instance] = list(read_jsonl(tmp_path / "instances.jsonl"))
    byte_tok = AutoTokenizer.from_pretrained(byte_tokenizer_dir)
    target_tokens = len(byte_tok(instance["text"], add_special_tokens=False)["input_ids"])
    generator_tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    generator_tokens = len(generator_tok(instance["text"], add_special_tokens=False)["input_ids"])
    assert instance["truncated"]  # the 4,000-byte document does not fit 1,600 byte tokens
    assert target_tokens <= 1600 < 4000  # fitted with the TARGET tokenizer...
    assert generator_tokens < target_tokens / 2  # ...which counts far more tokens than the generator's would


def test_a_chunk_too_big_for_the_target_context_is_rejected_not_fatal(tmp_path, embedded_model_dir,
                                                                       byte_tokenizer_dir):
    # 300 generator tokens are ~1,200 bytes: more than the 600 byte tokens a long instance may hold here
    cfg = config(model=str(embedded_model_dir), target_tokenizer=str(byte_tokenizer_dir), max_context=600)
    manifest = run_generation(marked_docs(1, chars=3000), cfg, tmp_path, engine=ScriptedEngine(), progress=False,
                              tokenizers=load_tokenizers(cfg))
    [record] = list(read_jsonl(tmp_path / "qa.jsonl"))
    assert (record["accepted"], record["reject_reason"]) == (False, "chunk_exceeds_context")
    assert any("lower --chunk-tokens or raise --max-context" in n for n in record["extraction_notes"])
    assert list(read_jsonl(tmp_path / "instances.jsonl")) == [] and manifest["status"] == "complete"


def test_factory_output_feeds_finetune_and_evaluation(tmp_path, generator_tokenizers):
    """A real output folder (real pipeline, writer and finalize) read by finetune's long-data reader and by
    evaluation's factory-qa task, each given the folder as a user would: the instance contract end to end."""
    from evaluation.tasks import load_factory_qa
    from finetune.sources import read_long

    run_generation(marked_docs(1), config(), tmp_path, engine=ScriptedEngine(), progress=False,
                   tokenizers=generator_tokenizers)  # doc-0: the accepted outcome
    [written] = list(read_jsonl(tmp_path / "instances.jsonl"))
    [long] = read_long([str(tmp_path)])
    assert (long["id"], long["kind"], long["messages"]) == (written["id"], "long", written["messages"])
    [example], _ = load_factory_qa(tmp_path)
    assert example.question == written["question"] and example.answers == [written["answer"]]
    assert example.context and example.context in written["messages"][0]["content"]
