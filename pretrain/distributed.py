"""Multi-GPU without touching the model code: torchrun env -> process group, FSDP2 per decoder layer.

With WORLD_SIZE unset (or 1) every function is a no-op, so the trainer stays single-device code.
Data: all ranks walk the same deterministic stream and rank r keeps sequences r, r+W, r+2W, ...,
so the data position in a checkpoint is the same on every rank. Full state dicts are gathered to
rank 0 for saving (fine up to a few billion parameters; larger runs would switch to DCP).
"""
from __future__ import annotations

import os

import torch


def init() -> tuple[int, int, int]:
    """(rank, world, local_rank); initialises NCCL when started by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend)
    return dist.get_rank(), world, local


def wrap(root, layers, world: int):
    """FSDP2 (fully_shard) each decoder layer, then the root (the loss module); unchanged on one device."""
    if world == 1:
        return root
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(root, mp_policy=mp)
    return root


def full_state(model, optimizer, world: int) -> tuple[dict | None, dict | None]:
    """(model, optimizer) state dicts to save: None/plain on one device, gathered full on every rank under FSDP."""
    if world == 1:
        return None, optimizer.state_dict() if optimizer is not None else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=opts)
    optim_state = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return model_state, optim_state


def load_optimizer_state(model, optimizer, state: dict, world: int) -> None:
    if world == 1:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def take_batch(stream, micro: int, seq_len: int, rank: int, world: int) -> torch.Tensor:
    rows = []
    for _ in range(micro):
        for r in range(world):
            seq = stream.next_sequence(seq_len)
            if r == rank:
                rows.append(seq)
    return torch.stack(rows)


def mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return value
    import torch.distributed as dist

    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.AVG)
    return value
