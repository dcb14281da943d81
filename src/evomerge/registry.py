"""Named extension points: one registry per kind (scorers, estimators, anchor selections,
executors), so adding an entry touches one file: the entry's own definition.

The config validates a name by looking it up here (with "did you mean"), and the API,
the wizard, ``evomerge config-schema`` and docs/config.md list what is registered, so
none of them spells the names again. Merge methods come from mergekit's registry
(``merge.methods``) and algorithms from pymoo's (``search.algorithms``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from .errors import EvomergeError

T = TypeVar("T")


class UnknownNameError(EvomergeError):
    """A name that no registry entry has (a registry may raise a subclass of its own)."""


def unknown_name(what: str, name: str, valid: list[str]) -> str:
    """``unknown <what>. Did you mean 'x'? Valid: a, b, c.``"""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {name!r}.{hint} Valid: {', '.join(valid)}."


class Registry(Generic[T]):
    """Entries by name, in the order they were registered."""

    def __init__(self, kind: str, error: type[EvomergeError] = UnknownNameError) -> None:
        self.kind, self.error = kind, error
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T) -> T: ...
    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """Add ``entry`` as ``name`` (or use as a decorator); a name is registered once."""

        def add(value: T) -> T:
            if name in self._entries:
                raise EvomergeError(f"{self.kind} {name!r} is registered already")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(unknown_name(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> T:
        return self.get(name)


def summary(entry: object) -> str:
    """The first sentence of an entry's docstring, for listings."""
    doc = " ".join((getattr(entry, "doc", None) or getattr(entry, "__doc__", None) or "").split())
    return doc.split(". ")[0].rstrip(".") if doc else ""
