"""A trainer's settings: one frozen dataclass, its command-line flags, and the form a run saves.

Every trainer has a config class derived from :class:`RunConfig` (the run folder, the data, the
base model and the loop's knobs) and a ``run(cfg)``. Its ``main(argv)`` only turns flags into that
config: :func:`parser_for` makes one flag per field (``batch_size`` -> ``--batch-size``), so a
field's name is also its flag's, and :func:`config_from_args` builds the config from what was given
(flags not given keep the dataclass defaults)::

    @dataclass(frozen=True)
    class UNetConfig(RunConfig):
        max_steps: int = 20_000                      # a trainer's own default for a loop knob
        caption_dropout: float = opt(0.1, "share of captions replaced by ''")

    cfg = UNetConfig(out="runs/unet", data=("data/shapes",), max_steps=200)   # from Python
    cfg = config_from_args(UNetConfig, parser_for(UNetConfig, "...").parse_args(argv))  # from flags

A field's ``metadata`` may hold ``help``, ``choices``, ``type`` (an argparse converter), ``flag`` (another
flag name), ``group``, ``metavar`` and, for a tuple, ``nargs`` (``"+"``: one flag takes several values).
A class lists the fields a run needs in ``REQUIRED`` and the fields that may
change when a run is resumed in ``MAY_CHANGE`` (the loop's bookkeeping always may): the run saves
:meth:`RunConfig.record` in ``run_config.json`` and a resume with other values of the rest is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from latentgen.training import TrainConfig

T = TypeVar("T", bound="RunConfig")

CONFIG_VERSION = 1
LOOP_GROUP = "training loop"


class TrainerError(ValueError):
    """Bad input to a trainer (a missing folder, a setting out of range): the message names it and the fix."""


def opt(default: Any, help: str = "", **meta) -> Any:
    """A config field with its flag's help (and ``choices``, ``type``, ``flag``, ``group``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("config fields are immutable: use a tuple")
    return field(default=default, metadata={"help": help, **meta})


def _loop(default: Any, help: str = "", **meta) -> Any:
    return opt(default, help, group=LOOP_GROUP, **meta)


@dataclass(frozen=True)
class RunConfig:
    """What every trainer takes: the run folder, its data, a base model and the loop's knobs."""

    out: str = field(metadata={"help": "run folder: checkpoints, logs and the exported model"})
    data: tuple[str, ...] = opt((), "image folder (repeat for several)")
    model: str | None = opt(None, "base model folder")
    max_steps: int = _loop(1000)
    batch_size: int = _loop(16, "per process")
    lr: float = _loop(1e-4)
    seed: int = _loop(0)
    resume: str | None = _loop(None, "resume from the latest (or a given) checkpoint: latest|PATH")
    mixed_precision: str = _loop("no", choices=("no", "bf16", "fp16"))
    grad_accum: int = _loop(1)
    warmup_steps: int = _loop(0)
    lr_schedule: str = _loop("constant", "after warm-up: constant, or a linear or cosine decay to 0 at "
                             "--max-steps, or wsd (constant, then linear to 0 over the last 20%%); on --resume "
                             "it follows the new --max-steps", choices=("constant", "linear", "cosine", "wsd"))
    checkpoint_every: int = _loop(500)
    keep_checkpoints: int = _loop(2)
    validate_every: int = _loop(0, "0: only at the end")
    log_every: int = _loop(10)
    ema_decay: float | None = _loop(None)
    num_workers: int = _loop(0)
    max_bad_steps: int = _loop(0, "non-finite losses to skip before stopping")
    progress: bool = _loop(True, "no progress bar", flag="--no-progress")

    TRAINER: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    MAY_CHANGE: ClassVar[tuple[str, ...]] = ()
    LOOP_MAY_CHANGE: ClassVar[tuple[str, ...]] = (
        "out", "resume", "max_steps", "warmup_steps", "lr_schedule", "checkpoint_every", "keep_checkpoints",
        "validate_every", "log_every", "num_workers", "max_bad_steps", "progress")

    def __post_init__(self):
        for name in self.REQUIRED:
            if getattr(self, name) in (None, (), ""):
                raise ValueError(f"{self.TRAINER or type(self).__name__} needs {_flag(name)} "
                                 f"({_help(type(self), name) or name})")
        if isinstance(self.data, (str, list)):  # a single folder or a list given from Python
            object.__setattr__(self, "data", (self.data,) if isinstance(self.data, str) else tuple(self.data))
        self.loop()  # the loop's own checks (max_steps >= 1, ...), at construction

    def loop(self, **overrides) -> TrainConfig:
        """The :class:`TrainConfig` of this run (the loop's fields of the same names)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in names}
        return TrainConfig(**{**values, **overrides})

    def record(self, **derived) -> dict:
        """What ``run_config.json`` holds: the config (``asdict``), its version, and values derived from
        it and the data (``derived``, e.g. the number of examples)."""
        return {"config_version": CONFIG_VERSION, "trainer": self.TRAINER, **dataclasses.asdict(self), **derived}

    def may_change(self) -> tuple[str, ...]:
        """The record's keys a resumed run may change (bookkeeping, length, validation)."""
        return self.LOOP_MAY_CHANGE + self.MAY_CHANGE


# -- flags


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help(cls, name: str) -> str:
    f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    return f.metadata.get("help", "") if f else ""


def _base_meta() -> dict:
    return {f.name: f.metadata for f in dataclasses.fields(RunConfig)}


def _base_type(hint) -> tuple[Any, bool, bool]:
    """``(type, optional, repeated)`` of an annotation such as ``int | None`` or ``tuple[str, ...]``."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
        origin = typing.get_origin(hint)
    if origin is tuple:
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def parser_for(cls: type[RunConfig], description: str) -> argparse.ArgumentParser:
    """An argument parser with one flag per field of ``cls``; flags not given are left out of the result."""
    # allow_abbrev=False: a prefix such as --ou or --max-step is an error, never another flag
    p = argparse.ArgumentParser(description=description, allow_abbrev=False, argument_default=argparse.SUPPRESS)
    groups: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    base = _base_meta()  # a subclass that gives a loop knob its own default keeps its help and group
    for f in dataclasses.fields(cls):
        meta = {**base.get(f.name, {}), **f.metadata}
        group = meta.get("group")
        target = p if group is None else groups.setdefault(group, p.add_argument_group(group))
        kind, _, repeated = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        text = meta.get("help", "")
        kw: dict[str, Any] = {"dest": f.name}
        if kind is bool:
            kw["action"] = "store_false" if default else "store_true"
        else:
            kw["type"] = meta.get("type", kind)
            kw["metavar"] = meta.get("metavar", {int: "N", float: "X"}.get(kind, "DIR" if f.name in
                                                                            ("out", "data", "model") else None))
            if repeated and "nargs" in meta:  # --flag A B C (given again, the last one counts)
                kw["nargs"] = meta["nargs"]
            elif repeated:
                kw["action"] = "append"
            if "choices" in meta:
                kw["choices"], kw["metavar"] = meta["choices"], None
            if default not in (None, (), ""):
                text = f"{text} (default: {default})" if text else f"default: {default}"
        kw["required"] = f.default is dataclasses.MISSING or f.name in cls.REQUIRED
        kw["help"] = text.replace("%", "%%").replace("%%%%", "%%") if text else None
        target.add_argument(meta.get("flag", _flag(f.name)), **{k: v for k, v in kw.items() if v is not None})
    return p


def config_from_args(cls: type[T], args: argparse.Namespace | dict) -> T:
    """The config of the flags that were given; the others keep their defaults."""
    values = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


def main_for(run, cls: type[T], description: str, argv=None):
    """A trainer's ``main(argv)``: flags to config, then ``run(cfg)``; a :class:`TrainerError` is one
    line on stderr and exit status 2, not a traceback."""
    import sys

    cfg = parse_config(cls, description, argv)
    try:
        return run(cfg)
    except TrainerError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def parse_config(cls: type[T], description: str, argv=None) -> T:
    """Flags to config; a value the config refuses is a usage error naming it."""
    p = parser_for(cls, description)
    args = p.parse_args(argv)
    try:
        return config_from_args(cls, args)
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


def config_argv(cfg: RunConfig) -> list[str]:
    """The flags that give ``cfg`` back (fields left at their defaults are left out)."""
    argv: list[str] = []
    base = _base_meta()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue
        meta = {**base.get(f.name, {}), **f.metadata}
        flag = meta.get("flag", _flag(f.name))
        if isinstance(value, bool):
            argv.append(flag)
        elif isinstance(value, tuple) and "nargs" in meta:
            argv += [flag, *map(str, value)]
        elif isinstance(value, tuple):
            for v in value:
                argv += [flag, str(v)]
        else:
            argv += [flag, str(value)]
    return argv


def command_for(cfg: RunConfig) -> str:
    """The ``latentgen train`` command line that runs ``cfg``."""
    import shlex

    return shlex.join(["latentgen", "train", cfg.TRAINER, *config_argv(cfg)])
