"""The building blocks of the domain models: their base (unknown fields refused, frozen), quantities as field
types (one parser, :mod:`haddock.executor.quantity`, used everywhere) and job and execution ids.

Every model validates its input and says plainly what is wrong; the gRPC layer turns a
``pydantic.ValidationError`` into INVALID_ARGUMENT with these messages.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

from haddock.executor.errors import shown
from haddock.executor.quantity import parse_bytes, parse_cpu, parse_duration


def _bytes(v: Any) -> Any:
    return parse_bytes(v) if isinstance(v, str | int | float) else v


def _cpu(v: Any) -> Any:
    return parse_cpu(v) if isinstance(v, str | int | float) else v


def _duration(v: Any) -> Any:
    if v is None:
        return None
    return parse_duration(v) if isinstance(v, str | int | float) else v


ByteQuantity = Annotated[int, BeforeValidator(_bytes)]
CpuQuantity = Annotated[float, BeforeValidator(_cpu)]
DurationSeconds = Annotated[float, BeforeValidator(_duration)]


class DomainModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_valid_id(v: str) -> bool:
    """Whether ``v`` can be a job or execution id: 1-128 letters, digits, '.', '_' or '-'."""
    return len(v) <= 128 and _ID_RE.match(v) is not None


def check_id(v: str, what: str) -> str:
    if not _ID_RE.match(v):
        raise ValueError(
            f"{what} {shown(v)} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return v
