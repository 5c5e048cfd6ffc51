"""Classes registered by name with a decorator, as timm's `register_model` does: expert families
(experts.base) and router levels (router.base). A registry knows its package, so that listing it
imports every module there and finds what each registers."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

Registered = TypeVar("Registered", bound=type)


class Registry(Generic[Registered]):
    """`kind` names the entries in messages ("expert family"); `attribute` is the class attribute
    that receives each entry's name; `package` holds the modules that register them."""

    def __init__(self, kind: str, attribute: str, package: str):
        self.kind = kind
        self.attribute = attribute
        self.package = package
        self._entries: dict[str, Registered] = {}

    def register(self, name: str) -> Callable[[Registered], Registered]:
        def decorate(cls: Registered) -> Registered:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            setattr(cls, self.attribute, name)
            self._entries[name] = cls
            return cls

        return decorate

    @contextmanager
    def registered(self, name: str, cls: Registered) -> Iterator[Registered]:
        """`cls` registered under `name` for the block only, so that trying an entry out (a test's
        family) leaves the registry as it was."""
        self.register(name)(cls)
        try:
            yield cls
        finally:
            del self._entries[name]

    def get(self, name: str) -> Registered | None:
        """The entry registered so far under `name`, without importing anything."""
        return self._entries.get(name)

    def all(self) -> dict[str, Registered]:
        """Every entry: those of every module in the package, and any registered elsewhere."""
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")
        return dict(self._entries)

    def unknown(self, name: str) -> str:
        return f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self.all()))}"
