"""A registry of named classes: the one mechanism behind every extension point (policy types, denoiser
kinds; routing variants use the same idea in ``mode_policy.nn.moe.routing``).

A registered class has a ``config_class`` whose JSON carries the class's name under a tag
(``TaggedConfig.tag_key``: ``"type"`` for policies, ``"kind"`` for denoisers), so a saved folder says which
class reads it. The built-in classes are imported on the first lookup; third-party packages can add
theirs through an entry point group (``[project.entry-points."mode_policy.policies"] name = "pkg.module"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """``what`` names the kind of thing in messages ("policy type"); ``builtins`` are the modules whose
    import registers the library's own classes; ``entry_point_group`` lets other packages add classes."""

    def __init__(
        self, what: str, builtins: tuple[str, ...] = (), entry_point_group: str | None = None
    ) -> None:
        self.what = what
        self._builtins = builtins
        self._group = entry_point_group
        self._classes: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: ``@REGISTRY.register("name")``; the name is also the config's tag."""

        def decorate(cls: T) -> T:
            known = self._classes.get(name)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise ValueError(f"{self.what} {name!r} is already registered, by {known.__name__}")
            cls.name = name
            if hasattr(cls, "config_class"):
                cls.config_class.tag = name
            self._classes[name] = cls
            return cls

        return decorate

    def get(self, name: str) -> T:
        """The class registered as ``name``; an unknown name raises ValueError listing the known ones."""
        if name not in self._classes:
            self._load()
        if name not in self._classes:
            raise ValueError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
        return self._classes[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._classes)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtins:
            importlib.import_module(module)
        if self._group:
            for entry in entry_points(group=self._group):
                entry.load()
