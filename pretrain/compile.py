"""torch.compile helpers shared by both trainers (pretrain and finetune)."""
from __future__ import annotations


def compile_decoder_layers(model) -> int:
    """`torch.compile` each decoder layer in place (the classes named in `model._no_split_modules`); returns how many.

    Per layer rather than the whole model: one small graph per layer type compiles fast and fuses the element-wise
    work (RMSNorm, SwiGLU, RoPE) that dominates at 16k once attention is flash; the LM head, the loss, PEFT wrapping
    and FSDP hooks stay outside the graph. The whole-model compile through the Trainer ran at half the speed.
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.compile()
    return len(layers)
