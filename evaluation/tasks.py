"""Task loaders: local files in the standard formats of NarrativeQA, Qasper, QuALITY, QMSum, ZeroSCROLLS and
the data factory's held-out long QA, all turned into `Example`s (users bring the files; none ship here).

Formats read (JSON, JSONL, Parquet, or a folder of them):
- narrativeqa: rows of the Hugging Face `deepmind/narrativeqa` layout ({document: {id, text}, question:
  {text}, answers: [{text}]}); a SCROLLS/ZeroSCROLLS-style file goes through the `zeroscrolls` loader.
- qasper: the release JSON ({paper_id: {title, abstract, full_text: [{section_name, paragraphs}], qas: [...]}})
  or JSONL of such papers; answers from extractive spans, free-form answers, yes/no, or "Unanswerable".
- quality: the release JSONL ({article_id, title, article, questions: [{question, options, gold_label (1-based)}]});
  scored as SCROLLS does, exact match against the gold option's text (choice accuracy is reported beside it).
- qmsum: meeting JSON/JSONL ({meeting_transcripts: [{speaker, content}], general_query_list, specific_query_list}).
- zeroscrolls: {id, input, output, document_start_index, document_end_index, query_start_index, query_end_index};
  the metric follows the subset named in the path (ROUGE for gov_report/summ_screen/qmsum/squality, exact
  match for quality, F1 otherwise); its F1 and exact match fold accents with unidecode, as ZeroSCROLLS' do.
- factory-qa: a generation output folder (or its instances.jsonl): document and question from the instance.
Items without a gold answer (test splits) are skipped and counted, never scored as wrong.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from evaluation.prompts import Example
from longscale.common.errors import LongscaleError
from longscale.common.instances import parse_instance
from longscale.common.records import iter_records


class TaskDataError(LongscaleError, ValueError):
    """A task file is missing or not in the expected format; the message names the file and what was wrong."""


TASK_METRICS = {"narrativeqa": "f1", "qasper": "f1", "quality": "exact_match", "qmsum": "rouge_gm", "zeroscrolls": "f1",
                "factory-qa": "f1", "ruler-squad": "substring_match", "ruler-hotpot": "substring_match",
                "ruler-squad-gold": "substring_match", "ruler-hotpot-gold": "substring_match"}
ACCENT_FOLDING_TASKS = frozenset({"zeroscrolls"})  # ZeroSCROLLS' F1/EM run unidecode; SQuAD's and SCROLLS' do not


def task_metric(task: str, data: str | Path | None) -> str:
    """The primary metric of a task; a ZeroSCROLLS file's follows its subset (named in the path)."""
    return zeroscrolls_metric(data or "") if task == "zeroscrolls" else TASK_METRICS[task]


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of a JSON/JSONL/Parquet file or a folder of them."""
    return iter_records(path, error=TaskDataError)


def _need(rec: Any, keys: tuple[str, ...], where: str, task: str) -> None:
    if not isinstance(rec, dict) or any(k not in rec for k in keys):
        got = sorted(rec) if isinstance(rec, dict) else type(rec).__name__
        raise TaskDataError(f"{where}: not a {task} record: expected keys {list(keys)}, got {got}")


def load_narrativeqa(path: str | Path) -> tuple[list[Example], int]:
    out: list[Example] = []
    for where, rec in read_records(path):
        _need(rec, ("document", "question", "answers"), where, "NarrativeQA")
        doc, q = rec["document"], rec["question"]
        answers = [a["text"] if isinstance(a, dict) else str(a) for a in rec["answers"]]
        out.append(Example(id=f"{doc.get('id', '')}:{len(out)}", context=doc["text"],
                           question=q["text"] if isinstance(q, dict) else str(q), answers=answers, metric="f1"))
    return out, 0


def _qasper_answer(answer: dict) -> str | None:
    a = answer.get("answer", answer)
    if a.get("unanswerable"):
        return "Unanswerable"
    if a.get("extractive_spans"):
        return ", ".join(a["extractive_spans"])
    if a.get("free_form_answer"):
        return a["free_form_answer"]
    if a.get("yes_no") is not None:
        return "Yes" if a["yes_no"] else "No"
    return None


def load_qasper(path: str | Path) -> tuple[list[Example], int]:
    out: list[Example] = []
    skipped = 0
    for where, rec in read_records(path):
        papers = rec.items() if isinstance(rec, dict) and "qas" not in rec else [(rec.get("id", where), rec)]
        for paper_id, paper in papers:
            _need(paper, ("title", "full_text", "qas"), f"{where} ({paper_id})", "Qasper")
            sections = [f"{s.get('section_name') or ''}\n" + "\n".join(s.get("paragraphs") or [])
                        for s in paper["full_text"]]
            context = "\n\n".join([paper["title"], paper.get("abstract", "")] + sections)
            for qa in paper["qas"]:
                answers = [a for a in (_qasper_answer(x) for x in qa.get("answers", [])) if a]
                if not answers:
                    skipped += 1
                    continue
                out.append(Example(id=qa.get("question_id", f"{paper_id}:{len(out)}"), context=context,
                                   question=qa["question"], answers=answers, metric="f1"))
    return out, skipped


def load_quality(path: str | Path) -> tuple[list[Example], int]:
    out: list[Example] = []
    skipped = 0
    for where, rec in read_records(path):
        _need(rec, ("article", "questions"), where, "QuALITY")
        for q in rec["questions"]:
            gold = q.get("gold_label")
            if not gold:
                skipped += 1
                continue
            out.append(Example(id=q.get("question_unique_id", f"{rec.get('article_id', where)}:{len(out)}"),
                               context=rec["article"], question=q["question"], answers=[q["options"][gold - 1]],
                               metric="exact_match", options=list(q["options"]), gold_index=gold - 1))
    return out, skipped


def load_qmsum(path: str | Path) -> tuple[list[Example], int]:
    out: list[Example] = []
    for where, rec in read_records(path):
        _need(rec, ("meeting_transcripts",), where, "QMSum")
        transcript = "\n".join(f"{t['speaker']}: {t['content']}" for t in rec["meeting_transcripts"])
        for kind in ("general_query_list", "specific_query_list"):
            for q in rec.get(kind, []):
                out.append(Example(id=f"{Path(where).stem}:{kind[:3]}:{len(out)}", context=transcript,
                                   question=q["query"], answers=[q["answer"]], metric="rouge_gm"))
    return out, 0


def zeroscrolls_metric(path: str | Path) -> str:
    name = str(path).lower()
    if any(k in name for k in ("gov_report", "summ_screen", "qmsum", "squality")):
        return "rouge_gm"
    return "exact_match" if "quality" in name else "f1"


def load_zeroscrolls(path: str | Path) -> tuple[list[Example], int]:
    out, skipped, metric = [], 0, zeroscrolls_metric(path)
    for where, rec in read_records(path):
        _need(rec, ("input",), where, "ZeroSCROLLS")
        if not rec.get("output"):
            skipped += 1
            continue
        text = rec["input"]
        ds, de = rec.get("document_start_index"), rec.get("document_end_index")
        qs, qe = rec.get("query_start_index"), rec.get("query_end_index")
        if ds is not None and de is not None:
            context = text[ds:de]
            question = text[qs:qe] if qs is not None and qe is not None else text[de:].strip()
        else:  # SCROLLS layout: the query, a blank line, then the document
            question, _, context = text.partition("\n\n")
        outputs = rec["output"] if isinstance(rec["output"], list) else [rec["output"]]
        out.append(Example(id=str(rec.get("id", where)), context=context, question=question.strip(),
                           answers=outputs, metric=metric))
    return out, skipped


def load_factory_qa(path: str | Path) -> tuple[list[Example], int]:
    """Held-out long QA from a generation output (instances.jsonl or .parquet, validated against the shared
    contract, docs/instances.md): the kept document between the template's triple quotes."""
    path = Path(path)
    if path.is_dir():
        path = path / "instances.jsonl"
    out: list[Example] = []
    for where, rec in read_records(path):
        instance = parse_instance(where, rec, error=TaskDataError)
        context = instance.kept_document()
        if context is None:
            raise TaskDataError(f"{where}: the user turn has no \"\"\"-delimited document (not a factory instance?)")
        out.append(Example(id=instance.id, context=context, question=instance.question, answers=[instance.answer],
                           metric="f1", meta={"doc_id": instance.doc_id, "answer_type": instance.answer_type}))
    return out, 0


FILE_LOADERS: dict[str, Callable[[str | Path], tuple[list[Example], int]]] = {
    "narrativeqa": load_narrativeqa, "qasper": load_qasper, "quality": load_quality, "qmsum": load_qmsum,
    "zeroscrolls": load_zeroscrolls, "factory-qa": load_factory_qa}
