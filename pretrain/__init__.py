"""Continual pretraining for long context: RoPE variants (ABF, PI, xPos ABF), the trainer, and the probes."""
