"""Registries of what a user adds (map methods, judges, real sources): the built-in entries, then
one module per addition in the registry's own package, found when the registry is first read.

An addition is one module in that package that registers itself::

    from models.cam import MAP_MAKERS

    @MAP_MAKERS.register("centre")
    def centre(model, images, classes, config): ...

No other file names it: the settings' choices, the JSON Schema and the CLI read the registry.
The package's modules are imported on the first read (not when the registry's module is
imported), so reading settings stays free of what the additions import.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, MutableMapping
from typing import Any, Callable


class Registry(MutableMapping):
    """Entries by name: ``builtin`` first, then those the modules of ``package`` register, in the
    order of their module names."""

    def __init__(self, package: str, builtin: dict[str, Any] | None = None):
        self.package = package
        self._entries: dict[str, Any] = dict(builtin or {})
        self._scanned = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """A decorator: the decorated object is the entry ``name`` (a name taken twice is an error)."""
        def add(entry: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.package}: {name!r} is registered twice")
            self._entries[name] = entry
            return entry
        return add

    def _scan(self) -> dict[str, Any]:
        """The entries, once every module of the package is imported (a module that fails to
        import fails every read, naming it: its entries are never silently missing)."""
        if not self._scanned:
            found = importlib.import_module(self.package)
            for module in sorted(info.name for info in pkgutil.iter_modules(found.__path__)):
                try:
                    importlib.import_module(f"{self.package}.{module}")
                except Exception as exc:
                    raise ImportError(f"{self.package}.{module} (an addition to this registry) failed to import: "
                                      f"{type(exc).__name__}: {exc}") from exc
            self._scanned = True
        return self._entries

    def __getitem__(self, name: str) -> Any:
        return self._scan()[name]

    def __setitem__(self, name: str, entry: Any) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._scan()))

    def __len__(self) -> int:
        return len(self._scan())

    def __contains__(self, name: object) -> bool:
        return name in self._scan()

    def __repr__(self) -> str:
        return f"Registry({self.package!r}, {list(self)})"
