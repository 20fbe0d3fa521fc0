"""Long-context probes: first-sentence retrieval, passkey, loss by position, context scaling, RoPE decay."""
