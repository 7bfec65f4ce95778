"""One lazy name registry for everything chosen by name: commands, generators, knowledge sources,
training recipes.

Built-in entries are ``"package.module:attribute"`` strings (or ``"package.module"`` for the module
itself), imported on first use, so listing names or importing a registry never imports torch or
loads a model. Plug-ins register live objects with :meth:`Registry.register`. An unknown name is a
``KeyError`` that lists what is available.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Generic, List, Mapping, Optional, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects of one ``kind`` (used in error messages)."""

    def __init__(self, kind: str, builtin: Optional[Mapping[str, str]] = None) -> None:
        self.kind = kind
        self._builtin: Dict[str, str] = dict(builtin or {})
        self._loaded: Dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        """Make ``obj`` available as ``name`` (replacing a built-in or earlier entry)."""
        self._loaded[name] = obj
        return obj

    def decorator(self, name: str, hook: Optional[Callable[[T], None]] = None) -> Callable[[T], T]:
        """Class decorator form of :meth:`register` (``hook`` sees the object first)."""

        def wrap(obj: T) -> T:
            if hook is not None:
                hook(obj)
            return self.register(name, obj)

        return wrap

    def unregister(self, name: str) -> None:
        """Forget a registered object (a built-in name is loaded again on next use)."""
        self._loaded.pop(name, None)

    def names(self) -> List[str]:
        return sorted(set(self._builtin) | set(self._loaded))

    def __contains__(self, name: object) -> bool:
        return name in self._builtin or name in self._loaded

    def get(self, name: str) -> T:
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._builtin:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        module_name, _, attr = self._builtin[name].partition(":")
        module: Any = importlib.import_module(module_name)
        obj = getattr(module, attr) if attr else module
        self._loaded[name] = obj
        return obj
