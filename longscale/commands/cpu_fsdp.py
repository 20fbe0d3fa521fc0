"""`python -m longscale.commands.cpu_fsdp finetune ...`: the `longscale` CLI with accelerate's FSDP allowed on CPU (gloo).

For CI and smoke runs only; GPU runs use `-m longscale.commands.main` and never import this. accelerate 1.15 turns an
FSDP config into `DistributedType.FSDP` only for accelerator device types (`AcceleratorState.__init__` lists
MULTI_GPU, MULTI_XPU, ... but not MULTI_CPU), so the finetuner on CPU processes silently trains under DDP.
FSDP2 itself runs on CPU with gloo, so this entry point does, for MULTI_CPU, exactly what accelerate does for
GPUs: mark the state FSDP and keep the plugin. Trade-off: it patches one accelerate constructor (checked against
1.15); where accelerate already chose FSDP, or no FSDP plugin is configured, it changes nothing.
"""
from __future__ import annotations

import os
import sys


def allow_fsdp_on_cpu() -> None:
    """Patch `AcceleratorState.__init__` so that an FSDP plugin on CPU processes yields FSDP, not DDP."""
    import accelerate.state as state
    from accelerate.utils import DistributedType

    os.environ.setdefault("ACCELERATE_USE_CPU", "true")  # MULTI_CPU + gloo (the FSDP launcher does not set it)
    original = state.AcceleratorState.__init__
    if getattr(original, "_cpu_fsdp", False):
        return

    def init(self, mixed_precision=None, cpu=False, dynamo_plugin=None, deepspeed_plugin=None, fsdp_plugin=None,
             *args, **kwargs):
        fresh = not state.AcceleratorState._shared_state
        original(self, mixed_precision, cpu, dynamo_plugin, deepspeed_plugin, fsdp_plugin, *args, **kwargs)
        if fresh and fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # accelerate's own FSDP branch, as it runs for MULTI_GPU
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = self.distributed_type

    setattr(init, "_cpu_fsdp", True)  # noqa: B010 (a marker on a function object; mypy refuses the attribute)
    state.AcceleratorState.__init__ = init


def main(argv: list[str] | None = None) -> int:
    allow_fsdp_on_cpu()
    from longscale.commands.main import main as longscale_main

    return longscale_main(argv)


if __name__ == "__main__":
    sys.exit(main())
