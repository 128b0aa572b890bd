"""One registry style for every kind of named thing: proxies, strategies, architectures, tasks.

A thing registers itself where it is defined, with a decorator (timm's ``@register_model``)::

    ARCHITECTURES = Registry("architecture")

    @ARCHITECTURES.register("cnn")
    def build_cnn(...): ...

    ARCHITECTURES.get("cnn")        # the object; an unknown name lists the known ones
    ARCHITECTURES.names()           # in registration order

Config validation, the CLI's ``list`` command, error messages and the contract tests all read the
registry, so a new entry needs no edit anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from whichmodel.errors import WhichModelError

T = TypeVar("T")


class UnknownNameError(WhichModelError, KeyError, ValueError):
    """A name no registry entry has; the message lists the known names.

    A ``KeyError`` (lookups) and a ``ValueError`` (bad input), so either ``except`` catches it;
    a :class:`~whichmodel.errors.WhichModelError` for the CLI (one line, exit 2).
    """

    def __init__(self, kind: str, name: object, known: list[str], hint: str = ""):
        super().__init__(name)
        self.kind, self.name, self.known, self.hint = kind, name, list(known), hint

    def __str__(self) -> str:
        known = ", ".join(self.known) or "none"
        return f"unknown {self.kind} {self.name!r}; known: {known}{self.hint}"


class Registry(Generic[T]):
    """Named entries of one kind, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None, *, replace: bool = False
                 ) -> Callable[[T], T] | T:
        """``register(name, entry)``, or ``@register(name)`` as a decorator.

        A name registered twice is a ``ValueError`` unless ``replace=True`` (tests and plugins
        that deliberately override an entry).
        """
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"{self.kind} name {name!r}: a non-empty string without surrounding "
                             "whitespace")

        def add(obj: T) -> T:
            if name in self._entries and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str, hint: str = "") -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.kind, name, self.names(), hint) from None

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

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def describe(entry: Any) -> str:
    """The first line of an entry's docstring (for listings)."""
    doc = getattr(entry, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
