"""A tiny name -> callable registry, one per variant axis (losses, estimators, reducers...).

Each axis has one call signature; registering a name twice is an error so that two plugins cannot
silently shadow one another. What an entry needs from its caller (a reference model, a baseline
rollout, per-token rewards...) is declared with it, ``register(name, needs=...)``, and read back with
``needs(name)``, so trainers ask the registry instead of keeping lists of names.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from posttrain.errors import UserError

F = TypeVar("F", bound=Callable)


class UnknownName(UserError, KeyError):
    """An unknown registry name (a user's --loss, --rl.estimator, ...): one line, with the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[F]):
    def __init__(self, axis: str):
        self.axis = axis
        self._items: dict[str, F] = {}
        self._needs: dict[str, object] = {}

    def register(self, name: str, needs: object = None) -> Callable[[F], F]:
        """Decorator registering `name`; `needs` (any object, typically a frozen dataclass of the
        axis) says what the entry needs from its caller."""
        def deco(fn: F) -> F:
            if name in self._items:
                raise ValueError(f"{self.axis}: '{name}' is already registered")
            self._items[name] = fn
            self._needs[name] = needs
            return fn

        return deco

    def needs(self, name: str):
        """What `name` declared at registration (None when it declared nothing); unknown names raise."""
        self.get(name)
        return self._needs[name]

    def get(self, name: str) -> F:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UnknownName(f"unknown {self.axis} '{name}'{hint} (known: {', '.join(sorted(self._items))})")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
