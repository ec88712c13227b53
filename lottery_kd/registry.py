"""A name -> function registry: what masking functions and dynamic sparse methods sit behind."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Functions by name; `key` is the config key that selects one (named in every error)."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name`; a name is registered once (re-adding the same is fine)."""
        if name in self._entries and self._entries[name] != entry:  # functions: identity
            raise ValueError(f"a different {self.kind} named {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        return lambda entry: self.add(name, entry)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> T:
        """The entry registered as `name`; ValueError naming the config key and the allowed."""
        if name not in self._entries:
            raise ValueError(f"{self.key}: unknown {self.kind} {name!r}; allowed: "
                             f"{', '.join(self.names())}")
        return self._entries[name]
