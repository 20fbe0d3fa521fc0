"""Instruction finetuning for long context (paper sections 2.2 and 4.3).

Data assembly (sources -> tokenize -> masks -> mixing -> packing -> dataset) is pure and CPU-only; the trainer
(TRL's SFTTrainer on the pre-tokenized rows) is imported lazily so `--prepare-only` needs no GPU stack.
"""
