"""The one place where human quantities are parsed and formatted.

Byte sizes follow Kubernetes' conventions, which are what operators type:
binary suffixes ``Ki Mi Gi Ti Pi Ei`` (powers of 1024), decimal suffixes
``k M G T P E`` (powers of 1000), and — because ``docker run --memory 64m``
is what people mean — the single lower-case letters ``b k m g t p`` as binary
units, as Docker reads them. A plain number is bytes.

CPU is a float number of cores or Kubernetes millicores: ``0.5`` == ``500m``.

Durations are ``1.5``/``30s``/``500ms``/``2m``/``1h``/``1h30m``/``7d``; a plain number is seconds.

pydantic's ``ByteSize`` rejects ``Mi`` and Docker's own parser reads ``1g`` its
own way, so neither is used: everything goes through this module.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from haddock.executor.errors import shown

__all__ = [
    "GiB",
    "KiB",
    "MiB",
    "QuantityError",
    "TiB",
    "format_bytes",
    "format_cpu",
    "format_duration",
    "parse_bytes",
    "parse_cpu",
    "parse_duration",
]


# Binary byte units: the one definition every module uses.
KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4


class QuantityError(ValueError):
    """A quantity string could not be parsed; the message says why and what is accepted."""


_BYTE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "B": 1,
    # binary, Kubernetes style
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    # binary, Docker style (lower-case single letter, optional trailing b)
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    "p": 1024**5,
    "kb": 1024,
    "mb": 1024**2,
    "gb": 1024**3,
    "tb": 1024**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
    # decimal, SI
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}

_NUMBER_UNIT = re.compile(r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[A-Za-z]*)\s*$")

BYTES_HELP = "a byte size such as 1048576, 512Mi, 1Gi, 64m (Docker style) or 2G (decimal)"
CPU_HELP = "a number of CPU cores such as 0.5, 2 or 500m (millicores)"
DURATION_HELP = "a duration such as 30, 30s, 500ms, 5m, 1h, 1h30m or 7d"


def _decimal(num: str, original: str, what: str) -> Decimal:
    try:
        value = Decimal(num)
    except InvalidOperation as exc:  # pragma: no cover - the regex only lets numbers through
        raise QuantityError(f"{shown(original)} is not {what}") from exc
    if not value.is_finite():
        raise QuantityError(f"{shown(original)} is not {what}")
    return value


def parse_bytes(value: str | int | float) -> int:
    """Parse a byte size into an exact number of bytes.

    Fractions are allowed where the result is a whole number of bytes after
    rounding up (``1.5Gi`` is fine; ``0.3`` bytes rounds up to 1).
    """
    if isinstance(value, bool):
        raise QuantityError(f"{shown(value)} is not {BYTES_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise QuantityError(f"byte size must not be negative, got {value}")
        return value
    if isinstance(value, float):
        if value < 0:
            raise QuantityError(f"byte size must not be negative, got {value}")
        if not math.isfinite(value):
            raise QuantityError(f"byte size must be a finite number, got {value}")
        return math.ceil(value)
    text = str(value)
    if text.strip().startswith("-"):
        raise QuantityError(f"byte size must not be negative, got {shown(text)}")
    match = _NUMBER_UNIT.match(text)
    if not match:
        raise QuantityError(f"{shown(text)} is not {BYTES_HELP}")
    unit = match.group("unit")
    if unit not in _BYTE_UNITS:
        raise QuantityError(
            f"{shown(text)} has an unknown unit {shown(unit)}; use one of Ki, Mi, Gi, Ti (1024-based), "
            f"k, m, g, t (Docker style, 1024-based) or K, M, G, T (1000-based)"
        )
    number = _decimal(match.group("num"), text, BYTES_HELP)
    total = number * _BYTE_UNITS[unit]
    return int(total.to_integral_value(rounding="ROUND_CEILING"))


def parse_cpu(value: str | int | float) -> float:
    """Parse a CPU quantity into (fractional) cores."""
    if isinstance(value, bool):
        raise QuantityError(f"{shown(value)} is not {CPU_HELP}")
    if isinstance(value, int | float):
        if value < 0:
            raise QuantityError(f"CPU must not be negative, got {value}")
        if not math.isfinite(value):
            raise QuantityError(f"CPU must be a finite number of cores, got {value}")
        return float(value)
    text = str(value)
    if text.strip().startswith("-"):
        raise QuantityError(f"CPU must not be negative, got {shown(text)}")
    match = _NUMBER_UNIT.match(text)
    if not match:
        raise QuantityError(f"{shown(text)} is not {CPU_HELP}")
    unit = match.group("unit")
    number = _decimal(match.group("num"), text, CPU_HELP)
    if unit == "":
        return float(number)
    if unit == "m":
        return float(number / 1000)
    raise QuantityError(f"{shown(text)} has an unknown CPU unit {shown(unit)}; use cores (0.5) or millicores (500m)")


_DURATION_PART = re.compile(r"(?P<num>[0-9]*\.?[0-9]+)(?P<unit>ms|us|µs|ns|d|h|m|s)")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(value: str | int | float) -> float:
    """Parse a duration into seconds (float)."""
    if isinstance(value, bool):
        raise QuantityError(f"{shown(value)} is not {DURATION_HELP}")
    if isinstance(value, int | float):
        if value < 0:
            raise QuantityError(f"duration must not be negative, got {value}")
        if not math.isfinite(value):
            raise QuantityError(f"duration must be a finite number of seconds, got {value}")
        return float(value)
    text = str(value).strip()
    if not text:
        raise QuantityError(f"an empty string is not {DURATION_HELP}")
    if text.startswith("-"):
        raise QuantityError(f"duration must not be negative, got {shown(text)}")
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group("num")) * _DURATION_UNITS[match.group("unit")]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise QuantityError(f"{shown(text)} is not {DURATION_HELP}")
    return total


def format_bytes(n: int) -> str:
    """Bytes in the largest binary unit that fits: exact where whole (``32Mi``), else one decimal (``23.5Gi``)."""
    if n < 0:
        raise ValueError("negative byte count")
    for unit in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        size = _BYTE_UNITS[unit]
        if n >= size:
            if n % size == 0:
                return f"{n // size}{unit}"
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def format_cpu(cores: float) -> str:
    millis = round(cores * 1000)
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s else ""]
    return "".join(parts) or "0s"
