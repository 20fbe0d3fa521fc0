"""The optimizer step fused into the backward pass (`--step-in-backward`), for both trainers.

`StepInBackward(optimizer)` keeps `optimizer`'s parameter groups and hyperparameters but steps each parameter
on its own, in the parameter's post-accumulate-grad hook, as soon as the backward pass has finished its
gradient, and frees that gradient right after: a full set of gradients is never alive at once (7B parameters in
bf16: ~13.5 GB less peak memory). What that costs:
- every backward pass is an optimizer step: no gradient accumulation over micro-batches;
- no clipping by the global gradient norm (the norm is only known once every gradient exists and was already
  used); the norm is still measured on the way (`grad_norm()`) for the logs;
- one process only (FSDP shards and reduces gradients outside these hooks).
The trainers refuse those combinations (`check_step_in_backward`).

What stays as it was: the wrapper is a `torch.optim.Optimizer` whose `param_groups` are the real groups, so an
LR scheduler drives it (each parameter's step reads its group's current lr, weight decay, betas, ...);
`step()` does nothing (the work was done in backward) so a training loop keeps calling it; `state_dict()` /
`load_state_dict()` are those of the wrapped optimizer class over the same parameters (the per-parameter
optimizers share the wrapper's `state`), so a checkpoint written with the step in backward resumes without it
and the other way round.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

REFUSALS = {
    "accumulation": "--step-in-backward steps the optimizer inside every backward pass, so each micro-batch is "
                    "an optimizer step: gradient accumulation is impossible",
    "grad_clip": "--step-in-backward cannot clip by the global gradient norm (each parameter steps before the "
                 "others' gradients exist): use --grad-clip 0",
    "world": "--step-in-backward runs in one process only (under FSDP/DDP gradients are reduced outside the "
             "per-parameter hooks)",
}


class StepInBackward(torch.optim.Optimizer):
    """`optimizer`'s groups, stepped one parameter at a time inside the backward pass (module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        if isinstance(optimizer, StepInBackward):
            raise TypeError("already a StepInBackward optimizer")
        self.inner_class = type(optimizer)
        groups = [dict(group) for group in optimizer.param_groups]
        super().__init__(groups, dict(optimizer.defaults))
        accepted = inspect.signature(self.inner_class.__init__).parameters
        kwargs = {k: v for k, v in optimizer.defaults.items() if k in accepted and k != "params"}
        self._group_of: dict[torch.Tensor, int] = {}
        self._single: dict[torch.Tensor, torch.optim.Optimizer] = {}
        self._hooks = []
        self._sq_norm: torch.Tensor | None = None
        for index, group in enumerate(self.param_groups):
            hyper = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                single = self.inner_class([{"params": [p], **hyper}], **kwargs)
                single.state = self.state  # one state for all: state_dict() is the wrapped class's format
                self._single[p] = single
                self._group_of[p] = index
                self._hooks.append(p.register_post_accumulate_grad_hook(self._step_parameter))

    @torch.no_grad()
    def _step_parameter(self, p: torch.Tensor) -> None:
        if p.grad is None:
            return
        single = self._single[p]
        group = self.param_groups[self._group_of[p]]  # read now: the scheduler (or a load) may have replaced it
        single.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
        square = torch.linalg.vector_norm(p.grad.detach()).float().square()  # no fp32 copy of the gradient
        self._sq_norm = square if self._sq_norm is None else self._sq_norm + square
        single.step()
        p.grad = None

    def step(self, closure=None):
        """Nothing to do: every parameter stepped during the backward pass (`closure` is refused)."""
        if closure is not None:
            raise ValueError("StepInBackward.step takes no closure (the step happens inside backward)")
        return None

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradients stepped since the last call (0 when none), then reset."""
        value = torch.zeros(()) if self._sq_norm is None else self._sq_norm.sqrt()
        self._sq_norm = None
        return value

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for single in self._single.values():  # the base class put a new `state` in place: share it again
            single.state = self.state

    def remove_hooks(self) -> None:
        """Detach from the parameters (a later backward then leaves their gradients alone)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def check_step_in_backward(*, accumulation: int, grad_clip: float, world: int, detail: str = "") -> None:
    """Raise ConfigError naming each setting that cannot go with the optimizer step in backward."""
    from longscale.common.errors import ConfigError

    problems = []
    if accumulation > 1:
        problems.append(f"{REFUSALS['accumulation']} ({detail or f'{accumulation} micro-batches a step'})")
    if grad_clip > 0:
        problems.append(REFUSALS["grad_clip"] + f" (it is {grad_clip})")
    if world > 1:
        problems.append(REFUSALS["world"] + f" (WORLD_SIZE {world})")
    if problems:
        raise ConfigError("; ".join(problems))
