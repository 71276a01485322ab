"""npm-style range resolution on top of the semver library."""

from __future__ import annotations

import pytest

from activity_registry import VersionRange, parse_spec

VERSIONS = [
    "0.1.0",
    "0.1.5",
    "0.2.0",
    "1.0.0",
    "1.2.0",
    "1.2.7",
    "1.3.0",
    "1.5.0-beta.1",
    "2.0.0-rc.1",
    "2.0.0",
    "2.1.0",
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("^1", "1.3.0"),
        ("^1.2", "1.3.0"),
        ("^1.2.7", "1.3.0"),
        ("^0.1", "0.1.5"),
        ("^0.1.0", "0.1.5"),
        ("~1.2", "1.2.7"),
        ("~1", "1.3.0"),
        ("~1.2.0", "1.2.7"),
        (">=1.0 <2", "1.3.0"),
        (">= 1.0 < 2", "1.3.0"),
        (">1.2", "2.1.0"),
        ("<=1.2", "1.2.7"),
        ("<1.2", "1.0.0"),
        ("1.2.0", "1.2.0"),
        ("=1.2.0", "1.2.0"),
        ("v1.2.0", "1.2.0"),
        ("1", "1.3.0"),
        ("1.x", "1.3.0"),
        ("1.2.x", "1.2.7"),
        ("*", "2.1.0"),
        ("x", "2.1.0"),
        ("", "2.1.0"),
        ("latest", "2.1.0"),
        ("1.0 - 1.2", "1.2.7"),
        ("^0.1 || ^1", "1.3.0"),
        ("^2.0.0-rc.1", "2.1.0"),
        ("2.0.0-rc.1", "2.0.0-rc.1"),
        ("~1.5.0-beta.0", "1.5.0-beta.1"),
        ("^3", None),
        ("<0.1.0", None),
        ("1.4.0", None),
    ],
)
def test_best_match(spec: str, expected: str | None) -> None:
    assert VersionRange.parse(spec).best(VERSIONS) == expected


def test_prereleases_need_an_explicit_opt_in() -> None:
    assert VersionRange.parse("^1").best(["1.5.0-beta.1"]) is None
    assert VersionRange.parse(">=1.0.0").best(["2.0.0-rc.1"]) is None


@pytest.mark.parametrize("spec", ["abc", "^1.2.3.4", ">>1", "1.2.3-", "^", "~x.y"])
def test_invalid_ranges(spec: str) -> None:
    with pytest.raises(ValueError, match="invalid version range"):
        VersionRange.parse(spec)


def test_exactness() -> None:
    assert VersionRange.parse("1.2.3").is_exact
    assert not VersionRange.parse("^1.2.3").is_exact
    assert not VersionRange.parse("1.2").is_exact


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("summarize", ("summarize", None)),
        ("summarize@^1", ("summarize", "^1")),
        ("summarize@>=1.0 <2", ("summarize", ">=1.0 <2")),
        ("word-count@1.0.0", ("word-count", "1.0.0")),
    ],
)
def test_parse_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "@1", "a b@1", "x@^^1"])
def test_parse_spec_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_spec(spec)
