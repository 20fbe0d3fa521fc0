"""Long-context evaluation: metrics, task loaders (NarrativeQA, Qasper, QuALITY, QMSum, ZeroSCROLLS, factory
QA, RULER-style QA), prompts with left truncation, and a runner that generates through the datafactory
engines and writes a results table and a score-by-length plot. `longscale eval` is its command (longscale/commands/evaluate.py)."""
