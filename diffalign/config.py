"""Experiment configs: frozen dataclasses whose fields carry help text and allowed values, and
the command line generated from them (one ``--flag`` per field)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing


def _field_type(f: dataclasses.Field, hints: dict):
    t = hints.get(f.name, f.type)
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t, origin = args[0], typing.get_origin(args[0])
    return t, origin


def add_config_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--flag`` per field of the frozen config dataclass ``cls`` (help from field metadata;
    the parser's ArgumentDefaultsHelpFormatter adds the defaults)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        t, origin = _field_type(f, hints)
        if t is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif origin is tuple:
            elem = typing.get_args(t)[0]
            parser.add_argument(flag, type=elem, nargs="+", default=default, help=help_)
        else:
            parser.add_argument(flag, type=t, default=default, choices=choices, help=help_)


def config_from_args(cls, args: argparse.Namespace):
    kwargs = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def field(default, help: str, choices=None):
    """A config field with its help text (and allowed values) for the generated CLI."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=meta)


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
