"""Experiment configs: frozen dataclasses whose fields carry help text and allowed values, and
the command line generated from them (one ``--flag`` per field).

A config may nest another (every training experiment nests the one ``LoopConfig``). Names stay
flat: a nested field is the flag ``--log-every``, the key ``log_every`` in ``results.json`` and
in ``build`` / ``replace``, so nesting is how configs share code, not something a user types.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def field(default, help: str, choices=None, nested_help: dict | None = None, nested_aliases: dict | None = None):
    """A config field with its help text (and allowed values) for the generated CLI. For a nested
    config, ``nested_help`` replaces the help of some of its fields (e.g. "log interval in epochs")
    and ``nested_aliases`` gives some of them a second flag (a name the command had before)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if nested_help:
        meta["nested_help"] = dict(nested_help)
    if nested_aliases:
        meta["nested_aliases"] = dict(nested_aliases)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The training loop's settings, shared by every experiment that trains (``train``'s
    ``steps_per_call``, ``log_every``, ``checkpoint_every`` and ``resume``, and the run's seed)."""

    seed: int = field(0, "seed of the run (model init, noise, data)")
    steps_per_call: int = field(100, "training steps per compiled chunk")
    log_every: int = field(100, "log interval in steps")
    checkpoint_every: int = field(1000, "checkpoint interval in steps (and one at the end)")
    resume: bool = field(True, "resume from the newest checkpoint under --out (--no-resume: refuse a directory "
                               "that holds one, deleting nothing)")

    def __post_init__(self):
        require_positive(self, "steps_per_call", "log_every", "checkpoint_every")

    def train_kwargs(self) -> dict:
        """The keyword arguments of ``diffalign.training.train`` this config sets."""
        return dict(steps_per_call=self.steps_per_call, log_every=self.log_every,
                    checkpoint_every=self.checkpoint_every, resume=self.resume)


def _is_config(value) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _field_type(f: dataclasses.Field, hints: dict):
    t = hints.get(f.name, f.type)
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t, origin = args[0], typing.get_origin(args[0])
    return t, origin


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def add_config_arguments(parser: argparse.ArgumentParser, cls, defaults=None, help_overrides=None, aliases=None) -> None:
    """One ``--flag`` per field of the frozen config dataclass ``cls``, nested configs flattened
    (help from field metadata; the parser's ArgumentDefaultsHelpFormatter adds the defaults)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if _is_config(default):
            add_config_arguments(parser, type(default), default, f.metadata.get("nested_help"),
                                 f.metadata.get("nested_aliases"))
            continue
        flags = ["--" + f.name.replace("_", "-")] + ([aliases[f.name]] if aliases and f.name in aliases else [])
        help_ = (help_overrides or {}).get(f.name, f.metadata.get("help", ""))
        kw = {"dest": f.name, "default": default, "help": help_}
        choices = f.metadata.get("choices")
        t, origin = _field_type(f, hints)
        if t is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif origin is tuple:
            parser.add_argument(*flags, type=typing.get_args(t)[0], nargs="+", **kw)
        else:
            parser.add_argument(*flags, type=t, choices=choices, **kw)


def config_from_args(cls, args: argparse.Namespace, defaults=None):
    """The config ``cls`` from parsed arguments (nested configs rebuilt from their flat flags)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _default(f)
        if _is_config(default):
            kwargs[f.name] = config_from_args(type(default), args, default)
            continue
        v = getattr(args, f.name)
        kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def as_dict(config) -> dict:
    """The config as one flat dict (nested configs' fields at the top level): the shape of the
    command line and of ``results.json``'s ``config``."""
    out: dict = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        items = as_dict(v) if _is_config(v) else {f.name: v}
        for k, item in items.items():
            if k in out:
                raise TypeError(f"{type(config).__name__}: the name {k!r} appears twice once nested configs are flattened")
            out[k] = item
    return out


def _split(cls, defaults, changes: dict) -> dict:
    """``changes`` (flat names) as keyword arguments of ``cls``, nested configs rebuilt."""
    kwargs, rest = {}, dict(changes)
    for f in dataclasses.fields(cls):
        current = getattr(defaults, f.name) if defaults is not None else _default(f)
        if _is_config(current) and f.name not in rest:
            names = set(as_dict(current))
            nested = {k: rest.pop(k) for k in list(rest) if k in names}
            if nested:
                kwargs[f.name] = replace(current, **nested)
        elif f.name in rest:
            kwargs[f.name] = rest.pop(f.name)
    if rest:
        raise TypeError(f"{cls.__name__} has no setting {', '.join(sorted(rest))}")
    return kwargs


def build(cls, **settings):
    """``cls`` from flat setting names: ``build(toy2d.Config, steps=300, seed=1, log_every=100)``."""
    return cls(**_split(cls, None, settings))


def replace(config, **changes):
    """``dataclasses.replace`` by flat names: ``replace(cfg, seed=1, steps=300)``."""
    return dataclasses.replace(config, **_split(type(config), config, changes))


def validate_choices(config) -> None:
    """Check every field with ``choices`` (also when the config is built in Python, not the CLI)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(config, f.name) not in choices:
            raise ValueError(f"{f.name}={getattr(config, f.name)!r} is not one of {choices}")


def require_positive(config, *names: str) -> None:
    """Raise a clear error for any named integer setting below 1."""
    for name in names:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
