"""Planners' plan_batch: the plans of a batch of documents equal plan_tokens of each, in order, from a process
pool (text re-attached to the target encoding) and from a thread."""
from __future__ import annotations

import asyncio

from datafactory.chunking import backend_of
from datafactory.config import GenerationConfig
from datafactory.documents import sample_corpus_dir
from datafactory.pipeline import load_tokenizers
from datafactory.planning import PlanSettings, plan_tokens
from datafactory.tokenpool import ProcessPlanner, ThreadPlanner


def _key(plan):
    target = plan.target
    spans = [target.start_char(t) for t in range(0, target.n_tokens, 97)] if target is not None else None
    return (plan.chunks, plan.too_short, plan.n_tokens, target.n_tokens if target else None,
            target.char_start if target else None, spans, target.text if target else None)


def test_plan_batch_equals_single_plans(embedded_model_dir):
    tokenizers = load_tokenizers(GenerationConfig(model=str(embedded_model_dir)))
    text = "".join(p.read_text() for p in sorted(sample_corpus_dir().glob("*.txt")))
    docs = [(text[k * 7919:k * 7919 + size], f"doc{k}") for k, size in enumerate([300, 9000, 20000, 41000, 2] * 3)]
    settings = PlanSettings(chunk_tokens=500, chunks_per_doc=2, seed=3, min_doc_tokens=100, max_context=2048)

    generator = backend_of(tokenizers.generator)
    target = generator if tokenizers.same else backend_of(tokenizers.target)
    single = [plan_tokens(t, i, generator, target, settings) for t, i in docs]

    for planner in (ThreadPlanner(tokenizers), ProcessPlanner(tokenizers, 2)):
        try:
            batch = asyncio.run(planner.plan_batch(docs, settings))
        finally:
            planner.close()
        assert len(batch) == len(docs)
        assert [_key(p) for p in batch] == [_key(p) for p in single]
        assert any(p.too_short for p in batch) and any(p.chunks for p in batch)
        assert all(p.target.text == t for p, (t, _) in zip(batch, docs) if p.target is not None)
