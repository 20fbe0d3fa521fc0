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

Why it saves little at long context, and what does (`offload_state`): the plain loop frees its gradients after
each step (`zero_grad(set_to_none=True)`), and a parameter's gradient appears only once the backward has passed
its layer, by when that layer's activations are freed. When activations dominate (a 7B model at 32k tokens: ~3.8
GiB a layer against 0.4 GB of gradients) the peak is at the start of the backward, where almost no gradient
exists yet, so stepping in backward leaves it where it was (measured on CPU: same peak at 4k tokens, 30% of the
gradients saved at 256). What is resident at that peak is the weights, the activations and the optimizer state
(AdamW: 2 values a parameter, 25 GiB for 7B in bf16). `offload_state=True` keeps those moments in (pinned) host
memory: each parameter's moments are copied in ahead of its hook (prefetched in the order of the previous
backward, on a copy stream), stepped on the GPU, and copied back on another stream while the backward goes on;
only a few parameters' moments are on the GPU at a time. It costs host<->device traffic of 2 x the state a
step (2 x 27 GB for 7B), hidden behind the backward's compute where the link keeps up.

What stays as it was: the wrapper is a `torch.optim.Optimizer` whose `param_groups` are the real groups, so an
LR scheduler drives it (each parameter's step reads its group's current lr, weight decay, betas, ...);
`step()` does nothing (the work was done in backward) so a training loop keeps calling it; `state_dict()` /
`load_state_dict()` are those of the wrapped optimizer class over the same parameters (the per-parameter
optimizers share the wrapper's `state`), so a checkpoint written with the step in backward resumes without it
and the other way round.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

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

    def __init__(self, optimizer: torch.optim.Optimizer, *, offload_state: bool = False):
        if isinstance(optimizer, StepInBackward):
            raise TypeError("already a StepInBackward optimizer")
        self.offload = HostState(self) if offload_state else None
        self.inner_class = type(optimizer)
        groups = [dict(group) for group in optimizer.param_groups]
        super().__init__(groups, dict(optimizer.defaults))
        accepted = inspect.signature(self.inner_class.__init__).parameters
        kwargs = {k: v for k, v in optimizer.defaults.items() if k in accepted and k != "params"}
        self._group_of: dict[torch.Tensor, int] = {}
        self._single: dict[torch.Tensor, torch.optim.Optimizer] = {}
        self._hooks = []
        self._sq_norm: torch.Tensor | None = None
        self._host: dict[torch.Tensor, dict[str, torch.Tensor]] = {}  # offload_state: the moments' host tensors
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
        if self.offload is not None:
            self.offload.bring(p)
        single.step()
        if self.offload is not None:
            self.offload.send_back(p)
        p.grad = None

    def step(self, closure=None):
        """Nothing to do: every parameter stepped during the backward pass (`closure` is refused)."""
        if closure is not None:
            raise ValueError("StepInBackward.step takes no closure (the step happens inside backward)")
        if self.offload is not None:
            self.offload.backward_done()
        return None

    def state_dict(self) -> dict[str, Any]:
        if self.offload is not None:
            self.offload.wait()  # every copy back has landed in the host tensors the state refers to
        return super().state_dict()

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradients stepped since the last call (0 when none), then reset."""
        value = torch.zeros(()) if self._sq_norm is None else self._sq_norm.sqrt()
        self._sq_norm = None
        return value

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for single in self._single.values():  # the base class put a new `state` in place: share it again
            single.state = self.state
        if self.offload is not None:  # the base class cast the loaded moments to the parameters' device
            self.offload.move_all_to_host()

    def remove_hooks(self) -> None:
        """Detach from the parameters (a later backward then leaves their gradients alone)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


class HostState:
    """The moments of a StepInBackward optimizer kept in host memory between their parameter's steps.

    `state[p]` holds host tensors except while `p` steps (then device copies). On CUDA the host tensors are
    pinned; copies in run on one stream, prefetched `PREFETCH` parameters ahead in the previous backward's hook
    order, copies back on another; at most `IN_FLIGHT` copies back are outstanding (the hook waits for the oldest
    beyond that), which bounds the device memory the moments take to a few parameters' worth even when the CPU
    runs far ahead of the GPU. Both exceed a decoder layer's 9 parameters: a compiled layer's backward hands
    out all its gradients at once, so its moments must have been fetched during the layer before (Llama-7B: ~0.8
    GB a layer, ~2 GB on the device at most). On CPU the same bookkeeping runs with plain copies (what the
    tests exercise)."""

    PREFETCH = 12
    IN_FLIGHT = 12

    def __init__(self, owner: StepInBackward):
        self.owner = owner
        self.order: list[torch.Tensor] = []  # hook order of the last complete backward
        self.position: dict[torch.Tensor, int] = {}
        self.this_backward: list[torch.Tensor] = []
        self.done: set[torch.Tensor] = set()  # stepped in this backward: never prefetched again before the next
        self.hits = 0  # steps whose moments had been prefetched (a diagnostic: all but a few after the first)
        self.prefetched: dict[torch.Tensor, tuple[dict[str, torch.Tensor], Any]] = {}
        self.outstanding: list[tuple[Any, list[torch.Tensor]]] = []
        self.streams: dict[torch.device, tuple[Any, Any]] = {}
        self.pin = True

    @staticmethod
    def moment_keys(p: torch.Tensor, state: dict) -> list[str]:
        """The per-element state of `p` (AdamW: exp_avg, exp_avg_sq; not the scalar step)."""
        return [k for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape and k != "step"]

    def _streams(self, device: torch.device):
        if device not in self.streams:
            self.streams[device] = (torch.cuda.Stream(device), torch.cuda.Stream(device))
        return self.streams[device]

    def _to_device(self, p: torch.Tensor, host: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """Device copies of `p`'s host moments and the event after which they are there (None on CPU)."""
        if not p.is_cuda:
            return {k: v.clone() for k, v in host.items()}, None
        copy_in, _ = self._streams(p.device)
        compute = torch.cuda.current_stream(p.device)
        out = {}
        with torch.cuda.stream(copy_in):  # allocated and filled on the copy stream: no wait for the compute
            for k, v in host.items():
                out[k] = torch.empty_like(v, device=p.device)
                out[k].copy_(v, non_blocking=True)
                out[k].record_stream(compute)  # used there by the step, freed there after the copy back
        event = torch.cuda.Event()
        event.record(copy_in)
        return out, event

    def bring(self, p: torch.Tensor) -> None:
        """Before `p` steps: its moments on the device (prefetched or copied now); prefetch the next ones."""
        self.this_backward.append(p)
        self.done.add(p)
        state = self.owner.state[p]
        keys = self.moment_keys(p, state)
        if keys:  # none before the first step: the optimizer creates them on the device
            ready, event = self.prefetched.pop(p, (None, None))
            self.hits += ready is not None
            if ready is None:
                ready, event = self._to_device(p, {k: state[k] for k in keys})
            if event is not None:
                torch.cuda.current_stream(p.device).wait_event(event)
            state.update(ready)
        at = self.position.get(p)
        if at is not None:
            for q in self.order[at + 1:at + 1 + self.PREFETCH]:
                q_keys = self.moment_keys(q, self.owner.state[q])
                if q not in self.prefetched and q not in self.done and q_keys:
                    self.prefetched[q] = self._to_device(q, {k: self.owner.state[q][k] for k in q_keys})

    def send_back(self, p: torch.Tensor) -> None:
        """After `p` stepped: its moments back into their host tensors (allocated, pinned, on first use)."""
        state = self.owner.state[p]
        host = self.owner._host.setdefault(p, {})
        moved = []
        for k in self.moment_keys(p, state):
            value = state[k]
            if k not in host:
                host[k] = self._host_tensor(value)
            moved.append(value)
            if value.is_cuda:
                _, copy_out = self._streams(value.device)
                copy_out.wait_stream(torch.cuda.current_stream(value.device))
                with torch.cuda.stream(copy_out):
                    host[k].copy_(value, non_blocking=True)
                value.record_stream(copy_out)
            else:
                host[k].copy_(value)
            state[k] = host[k]
        if p.is_cuda and moved:
            _, copy_out = self._streams(p.device)
            event = torch.cuda.Event()
            event.record(copy_out)
            self.outstanding.append((event, moved))
            while len(self.outstanding) > self.IN_FLIGHT:
                self.outstanding.pop(0)[0].synchronize()

    def _host_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """A host tensor for `like`'s values: pinned for a CUDA tensor (asynchronous copies), unless pinning fails
        (then pageable, with a warning once: the copies then block the host and the offload costs time)."""
        if like.is_cuda and self.pin:
            try:
                return torch.empty(like.shape, dtype=like.dtype, device="cpu", pin_memory=True)
            except RuntimeError as exc:
                self.pin = False
                log.warning("offloaded optimizer state: pinning host memory failed (%s); using pageable memory", exc)
        return torch.empty(like.shape, dtype=like.dtype, device="cpu")

    def backward_done(self) -> None:
        """After a backward: its hook order is the next prefetch order; later copies in wait for the copies back."""
        if self.this_backward:
            self.order, self.this_backward = self.this_backward, []
            self.position = {p: i for i, p in enumerate(self.order)}
        self.prefetched.clear()  # what was fetched for a parameter that got no gradient this time
        self.done.clear()
        for copy_in, copy_out in self.streams.values():
            copy_in.wait_stream(copy_out)

    def wait(self) -> None:
        for event, _ in self.outstanding:
            event.synchronize()
        self.outstanding.clear()

    def move_all_to_host(self) -> None:
        for p in self.owner._single:
            state = self.owner.state.get(p)
            if state:
                self.send_back(p)
        self.wait()


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
