"""One registry type for every swappable part chosen by name in the config (advantage estimators,
policy losses, loss aggregations, KL estimators): registering twice and asking for an unknown name
fail the same way, with the names known."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name -> implementation`` for one kind of part; a plain dict to read.

    >>> shapes = Registry("shape")
    >>> @shapes.register("square")
    ... def square(x): return x * x
    >>> shapes.lookup("square")(3), sorted(shapes)
    (9, ['square'])
    >>> shapes.lookup("circle")
    Traceback (most recent call last):
    KeyError: "unknown shape 'circle'; known: ['square']"
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: file the function or class under ``name``."""

        def decorate(part: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = part
            return part

        return decorate

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {sorted(self)}") from None
