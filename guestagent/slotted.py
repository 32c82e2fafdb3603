"""``dataclass(slots=True)`` for every Python the agent supports (3.9 has no ``slots=``): a shared object
whose instances refuse an attribute nobody declared, so a typo or an ad-hoc field fails where it is set."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T")


def slotted(cls: type[T]) -> type[T]:
    """The dataclass ``cls`` rebuilt with ``__slots__`` = its fields (what Python 3.10's ``slots=True`` does)."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    body = {k: v for k, v in cls.__dict__.items() if k not in (*names, "__dict__", "__weakref__")}
    body["__slots__"] = names
    return type(cls)(cls.__name__, cls.__bases__, body)
