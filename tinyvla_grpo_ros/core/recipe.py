"""One definition per setting: a dataclass field with its help, its range and the adopted value.

    lr: float = setting(1e-3, "Adam learning rate of the LoRA tensors", lo=1e-8, hi=1.0)

Node parameters (nodes/ros_common.declare_settings), the bench's command line
(`add_arguments` / `from_arguments`) and the YAML files (checked by test_recipe.py) are derived
from these fields, never written out a second time. The dataclass's own `__post_init__` checks
the rules that span several fields and raises ValueError naming the field.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any


def setting(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
            choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field that carries its one-line help, numeric range and allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "lo": lo, "hi": hi,
                                                        "choices": choices})


def same_as(cls, name: str) -> Any:
    """A field that is the same setting as `cls.name` (its default, help and range), for a
    second node that must agree with the first (G: the episode manager and the learner)."""
    f = cls.__dataclass_fields__[name]
    return dataclasses.field(default=f.default, metadata=dict(f.metadata))


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    lo: float | None
    hi: float | None
    choices: tuple[str, ...] | None

    @property
    def kind(self) -> type:
        return type(self.default)

    def describe(self) -> str:
        """The help with its allowed values, as node descriptors and --help show it."""
        extra = f" (one of {', '.join(self.choices)})" if self.choices else ""
        return self.help + extra


def settings(cls, only: tuple[str, ...] | None = None) -> list[Setting]:
    """The documented fields of a recipe dataclass, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (only is not None and f.name not in only):
            continue
        m = f.metadata
        out.append(Setting(f.name, f.default, m["help"], m["lo"], m["hi"], m["choices"]))
    return out


def check_ranges(obj) -> None:
    """Raise ValueError naming the first field outside its declared range or choices."""
    for s in settings(type(obj)):
        v = getattr(obj, s.name)
        if s.choices is not None and v not in s.choices:
            raise ValueError(f"{s.name} must be one of {s.choices}, got {v!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if (s.lo is not None and v < s.lo) or (s.hi is not None and v > s.hi):
            raise ValueError(f"{s.name} must lie in [{s.lo}, {s.hi}], got {v}")


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false/1/0), got {text!r}")


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls,
                  only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (),
                  default_from: str = "") -> None:
    """One --field-name option per setting of `cls`, with its help, type and default.

    default_from = "the checkpoint" (say): the option has no default and is absent from the
    parsed namespace unless given, so the value comes from elsewhere (e.g. the checkpoint's
    sampler config) rather than from the dataclass default."""
    for s in settings(cls, only):
        if s.name in skip:
            continue
        kind = _parse_bool if s.kind is bool else s.kind
        default = argparse.SUPPRESS if default_from else s.default
        parser.add_argument(f"--{s.name.replace('_', '-')}", dest=s.name, type=kind,
                            default=default, choices=s.choices,
                            help=f"{s.help} (default {default_from or s.default})")


def from_arguments(cls, args: argparse.Namespace, **fixed: Any):
    """Build `cls` from the options `add_arguments` made (those present in args) and `fixed`."""
    values = {s.name: getattr(args, s.name) for s in settings(cls) if hasattr(args, s.name)}
    return cls(**(values | fixed))
