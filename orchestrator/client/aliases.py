"""The sync client's first method names (`send`, `get`, `wait`, ...), kept working for a
while: each warns (`DeprecationWarning`) and calls the method that replaced it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Generic, Self, TypeVar, overload

R = TypeVar("R")


class DeprecatedAlias(Generic[R]):
    """`old = DeprecatedAlias(new, old_keyword="new_keyword")` in a class body.

    The alias is typed by what it answers; its arguments are checked by the method it
    calls, since the keywords it renames are no longer in that method's signature."""

    def __init__(self, new: Callable[..., R], **renamed: str) -> None:
        self.new_name = new.__name__
        self.renamed = renamed
        self.old_name = "?"

    def __set_name__(self, owner: type, name: str) -> None:
        self.old_name = f"{owner.__name__}.{name}"

    @overload
    def __get__(self, instance: None, owner: type) -> Self: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Callable[..., R]: ...
    def __get__(self, instance: object, owner: type | None = None) -> Self | Callable[..., R]:
        if instance is None:
            return self
        new: Callable[..., R] = getattr(instance, self.new_name)  # a subclass's, if it has one

        def alias(*args: Any, **kwargs: Any) -> R:
            warnings.warn(
                f"{self.old_name} is deprecated: use {self.new_name}",
                DeprecationWarning,
                stacklevel=2,
            )
            return new(*args, **{self.renamed.get(key, key): v for key, v in kwargs.items()})

        return alias
