"""The typed config tree's building blocks: a base model that nests flat keys, deprecated spellings, and the
sub-models the trainers share (optimizer, checkpointing, compile, RoPE; attention is pretrain/attention.py's).

One spelling per knob: a knob has the same name in every command (`learning_rate`, `save_steps`, `rope_base`,
...). A YAML file or Python caller may give a sub-model's knob nested (`optimizer: {learning_rate: 1e-4}`) or
flat (`learning_rate: 1e-4`): leaf names are unique within a command, so `nest_keys` puts a flat key where it
belongs. Old spellings (`lr`, `grad_ckpt`, `save_every`, ...) are accepted for one release with a FutureWarning.
Each trainer subclasses a shared sub-model only to change its defaults (a partial YAML section then keeps the
trainer's own defaults for the knobs it does not name).
"""
from __future__ import annotations

import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class Deprecated:
    """An old spelling of a knob: `new` is its dotted path now; `convert` maps an old value to a new one."""

    new: str
    convert: Callable[[Any], Any] | None = None
    flag_type: type = str  # bool: the old flag was --x/--no-x


def sub_models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The fields of `model` that are config sub-models themselves."""
    found = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found[name] = annotation
    return found


def leaf_paths(model: type[BaseModel]) -> dict[str, str]:
    """Flat knob name -> dotted path, for the knobs of sub-models (`learning_rate` -> `optimizer.learning_rate`)."""
    paths = {}
    for section, sub in sub_models(model).items():
        for leaf in sub.model_fields:
            paths[leaf] = f"{section}.{leaf}"
    return paths


def _put(data: dict[str, Any], path: str, value: Any) -> None:
    section, _, leaf = path.rpartition(".")
    target = data.setdefault(section, {}) if section else data
    if isinstance(target, BaseModel):  # an already-built sub-model: update a copy
        target = data[section] = target.model_dump()
    target.setdefault(leaf, value)  # a canonical key given in the same source wins over an old or flat one


def nest_keys(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with flat sub-model knobs moved into their sections and deprecated spellings renamed (warned)."""
    deprecated: dict[str, Deprecated] = getattr(model, "DEPRECATED", {})
    paths = leaf_paths(model)
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()
                           if k in model.model_fields}
    for key, value in data.items():
        if key in model.model_fields:
            continue
        if key in deprecated:
            old = deprecated[key]
            warnings.warn(f"the setting {key!r} is deprecated and will be removed in the next release; use "
                          f"{old.new.rpartition('.')[2]!r}", FutureWarning, stacklevel=2)
            new = old.new if "." in old.new or old.new in model.model_fields else paths.get(old.new, old.new)
            _put(out, new, old.convert(value) if old.convert else value)
        elif key in paths:
            _put(out, paths[key], value)
        else:
            out[key] = value  # unknown: pydantic's extra="forbid" names it
    return out


class ConfigModel(BaseModel):
    """Base of every command's config: unknown keys are errors; flat and deprecated keys are nested first."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    DEPRECATED: ClassVar[dict[str, Deprecated]] = {}

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: Any) -> Any:
        return nest_keys(cls, data) if isinstance(data, dict) else data

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """pydantic's copy (not re-validated), with `update` keys nested as the constructor nests them: a flat
        `resume` reaches `checkpointing.resume` (pydantic alone would set a stray attribute and change nothing);
        an unknown key raises ValueError."""
        if not update:
            return super().model_copy(deep=deep)
        nested = nest_keys(type(self), dict(update))
        unknown = sorted(k for k in nested if k not in type(self).model_fields)
        if unknown:
            raise ValueError(f"{type(self).__name__}.model_copy: no such setting(s) {unknown}")
        merged: dict[str, Any] = {}
        for key, value in nested.items():
            current = getattr(self, key)
            if isinstance(value, dict) and isinstance(current, BaseModel):
                value = current.model_copy(update=value)
            merged[key] = value
        return super().model_copy(update=merged, deep=deep)


# ---- shared sub-models -----------------------------------------------------------------------------------

class OptimizerConfig(ConfigModel):
    learning_rate: float = Field(2e-5, gt=0, description="peak learning rate (cosine schedule)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, ge=0, description="max global gradient norm (0 = off; off by default with "
                             "--step-in-backward)")
    step_in_backward: bool = Field(
        False, description="step each parameter inside the backward pass as soon as its gradient is complete and "
        "free that gradient (no full set of gradients in memory: 2 bytes a parameter less peak in bf16); needs "
        "one micro-batch per step (no accumulation), no --grad-clip, one process")
    offload_optimizer_state: bool = Field(
        False, description="with --step-in-backward: keep the optimizer's moments in host memory and copy each "
        "parameter's in and out around its step, overlapped with the backward (AdamW: 4 bytes a parameter less "
        "GPU memory in bf16; costs host-device traffic of twice the state a step)")

    @model_validator(mode="after")
    def _step_in_backward_does_not_clip(self) -> Self:
        """With the step in backward the global norm is known only after every parameter stepped: clipping is
        off unless asked for, and asking for it is an error (pretrain/step_in_backward.py)."""
        if self.offload_optimizer_state and not self.step_in_backward:
            raise ValueError("--offload-optimizer-state moves each parameter's state in and out around its step "
                             "inside the backward pass: it needs --step-in-backward")
        if self.step_in_backward and self.grad_clip > 0:
            if "grad_clip" in self.model_fields_set:
                raise ValueError(f"--step-in-backward cannot clip by the global gradient norm (--grad-clip "
                                 f"{self.grad_clip}): use --grad-clip 0")
            self.grad_clip = 0.0
        return self


class CheckpointingConfig(ConfigModel):
    save_steps: int = Field(500, ge=1, description="checkpoint every N optimizer steps")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    resume: bool = Field(False, description="resume from the newest checkpoint in OUTPUT/checkpoints (refused when "
                         "the run's recipe settings differ)")


TorchCompile = Literal["auto", "off", "layers", "model"]


class CompileConfig(ConfigModel):
    torch_compile: TorchCompile = Field(
        "auto", description="layers: torch.compile each decoder layer (fuses norms/SwiGLU/RoPE; the fast setting on a "
        "GPU); model: the Trainer's whole-model compile (slower here); auto: layers on CUDA, off elsewhere")


class RopeConfig(ConfigModel):
    rope_base: float | None = Field(None, gt=1, description="RoPE base for abf/xpos-abf (default 500000)")


def literal_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a Literal annotation (also inside Optional), else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None
