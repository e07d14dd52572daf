"""Name registries for samplers, predictors and correctors (score_sde's ``register_predictor``).

A user adds a method by decorating one function; ``names`` is a live, read-only tuple-like view,
so module constants such as ``SAMPLERS`` list what is registered now, including user additions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class Names(Sequence):
    """The registered names in registration order; compares, adds and prints as a tuple."""

    def __init__(self, items: dict):
        self._items = items

    def __getitem__(self, i):
        return tuple(self._items)[i]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(tuple(self._items))

    def __contains__(self, name):
        return isinstance(name, str) and name in self._items

    def __add__(self, other):
        return tuple(self) + tuple(other)

    def __radd__(self, other):
        return tuple(other) + tuple(self)

    def __eq__(self, other):
        return isinstance(other, (tuple, Names)) and tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self):
        return repr(tuple(self))


class Registry:
    """``kind`` names -> functions, filled by the ``register(name)`` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}
        self.names = Names(self._items)

    def register(self, name: str, *, overwrite: bool = False):
        """Decorator adding ``fn`` under ``name``; refuses a taken name unless ``overwrite``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def wrap(fn):
            if name in self._items and not overwrite:
                raise ValueError(f"a {self.kind} is already registered as {name!r}; pass overwrite=True to replace it")
            self._items[name] = fn
            return fn

        return wrap

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a user's registration, e.g. at the end of a test)."""
        self._items.pop(name, None)

    def get(self, name: str) -> Callable:
        if name not in self.names:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {self.names}")
        return self._items[name]
