"""Name → object registries with a did-you-mean for unknown names.

Every pluggable thing (architectures, datasets, quantization schemes, stages) lives in one,
so an unknown name fails the same way everywhere.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """A small ordered mapping with a decorator to add entries and a friendly lookup error."""

    def __init__(self, kind: str, hint: Callable[[str], str | None] | None = None):
        self.kind = kind
        self.hint = hint  # name → the message for a name people often try that is not ours (None: the usual one)
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            special = self.hint(name) if self.hint is not None and isinstance(name, str) else None
            if special:
                raise UserError(special) from None
            raise UserError(
                f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}; "
                f"choose one of: {', '.join(self._items)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: Any) -> bool:
        return isinstance(name, str) and name in self._items  # a forged file may put a list where a name goes

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
