"""The one quantity parser: bytes, CPU, durations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.quantity import (
    QuantityError,
    format_bytes,
    format_cpu,
    format_duration,
    parse_bytes,
    parse_cpu,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("512Mi", 512 * 1024**2),
        ("1Gi", 1024**3),
        ("1.5Gi", 1536 * 1024**2),
        ("64m", 64 * 1024**2),  # Docker style
        ("64mb", 64 * 1024**2),
        ("2g", 2 * 1024**3),
        ("1k", 1024),
        ("2G", 2 * 10**9),
        ("2K", 2000),
        ("100B", 100),
        (" 32Mi ", 32 * 1024**2),
        ("1e3", 1000),
    ],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "Mi", "-1", "-1Gi", "1.2.3", "12 parsecs", "1Xi", "nan", "inf", "1 Gi Mi"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_bytes(text)


def test_parse_bytes_message_names_units() -> None:
    with pytest.raises(QuantityError, match="Ki, Mi, Gi"):
        parse_bytes("10Qi")


@given(st.integers(min_value=0, max_value=2**62))
def test_format_parse_round_trip_exact(n: int) -> None:
    text = format_bytes(n)
    if "." not in text:
        assert parse_bytes(text) == n


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["Ki", "Mi", "Gi", "k", "m", "g"]))
def test_binary_units_are_1024_based(n: int, unit: str) -> None:
    factor = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    assert parse_bytes(f"{n}{unit}") == n * factor


@pytest.mark.parametrize(
    ("text", "expected"), [("0.5", 0.5), ("500m", 0.5), ("2", 2.0), ("1500m", 1.5), ("250m", 0.25)]
)
def test_parse_cpu(text: str, expected: float) -> None:
    assert parse_cpu(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "-1", "1Gi", "abc", "0.5cores"])
def test_parse_cpu_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_cpu(text)


@given(st.integers(min_value=0, max_value=10**6))
def test_millicores_match_cores(millis: int) -> None:
    assert parse_cpu(f"{millis}m") == pytest.approx(millis / 1000)
    assert parse_cpu(format_cpu(millis / 1000)) == pytest.approx(millis / 1000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30", 30.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5", 1.5),
    ],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "-5s", "5x", "s", "1h 2m", "m5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("text", "expected"), [("7d", 604800.0), ("1d12h", 129600.0), ("0.5d", 43200.0)])
def test_parse_duration_days(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)
