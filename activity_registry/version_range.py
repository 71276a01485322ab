"""npm-style version ranges (`^1`, `~1.2`, `>=1.0 <2`, `1.x`, `1.2.3`, `*`) over `semver`.

A range is desugared once into sets of comparators (OR of ANDs), the way npm does it; matching
is then plain `semver.Version` comparison. Knows nothing about activities or storage.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import semver

__all__ = ["VersionRange", "parse_version"]

_WILDCARDS = frozenset({"x", "X", "*"})
_PARTIAL = re.compile(
    r"^v?(?P<major>0|[1-9]\d*|[xX*])"
    r"(?:\.(?P<minor>0|[1-9]\d*|[xX*])"
    r"(?:\.(?P<patch>0|[1-9]\d*|[xX*])"
    r"(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+(?P<build>[0-9A-Za-z.-]+))?)?)?$"
)
_COMPARATOR = re.compile(r"^(?P<op><=|>=|<|>|=|\^|~>?)?\s*(?P<version>\S+)$")
_HYPHEN = re.compile(r"^(?P<low>\S+)\s+-\s+(?P<high>\S+)$")

_OPERATORS: dict[str, Callable[[semver.Version, semver.Version], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "=": lambda a, b: a == b,
}


@functools.lru_cache(maxsize=4096)  # workers resolve the same few specs for every workflow
def parse_version(text: str) -> semver.Version:
    """Parse a full semantic version (`1.2.3`, `1.2.3-rc.1`); raises ValueError otherwise."""
    try:
        return semver.Version.parse(text.removeprefix("v"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"'{text}' is not a semantic version (MAJOR.MINOR.PATCH): {err}") from err


@dataclass(frozen=True, slots=True)
class _Partial:
    """A possibly incomplete version: `1`, `1.2`, `1.x`, `1.2.3-rc.1`."""

    major: int | None
    minor: int | None
    patch: int | None
    prerelease: str | None

    def floor(self) -> semver.Version:
        return semver.Version(
            self.major or 0, self.minor or 0, self.patch or 0, prerelease=self.prerelease
        )


@dataclass(frozen=True, slots=True)
class _Comparator:
    op: str
    version: semver.Version

    def test(self, version: semver.Version) -> bool:
        return _OPERATORS[self.op](version, self.version)


def _number(text: str | None) -> int | None:
    return None if text is None or text in _WILDCARDS else int(text)


def _parse_partial(text: str, spec: str) -> _Partial:
    match = _PARTIAL.match(text)
    if match is None:
        raise ValueError(f"invalid version range '{spec}': '{text}' is not a version")
    major, minor, patch = (_number(match[k]) for k in ("major", "minor", "patch"))
    if major is None:
        minor = patch = None
    elif minor is None:
        patch = None
    return _Partial(major, minor, patch, match["pre"] if patch is not None else None)


def _caret(p: _Partial) -> list[_Comparator]:
    low = _Comparator(">=", p.floor())
    if p.major is None:
        return []
    if p.major > 0 or p.minor is None:
        high = semver.Version(p.major + 1, 0, 0, prerelease="0")
    elif p.minor > 0 or p.patch is None:
        high = semver.Version(0, p.minor + 1, 0, prerelease="0")
    else:
        high = semver.Version(0, 0, p.patch + 1, prerelease="0")
    return [low, _Comparator("<", high)]


def _tilde(p: _Partial) -> list[_Comparator]:
    if p.major is None:
        return []
    if p.minor is None:
        high = semver.Version(p.major + 1, 0, 0, prerelease="0")
    else:
        high = semver.Version(p.major, p.minor + 1, 0, prerelease="0")
    return [_Comparator(">=", p.floor()), _Comparator("<", high)]


def _x_range(p: _Partial) -> list[_Comparator]:
    """A bare (possibly partial) version: `1.2.3` exact, `1.2` = `~1.2`, `1` = `^1`, `*` = any."""
    if p.patch is not None:
        return [_Comparator("=", p.floor())]
    return _tilde(p)


def _primitive(op: str, p: _Partial) -> list[_Comparator]:
    if p.major is None:  # `>=*`, `<x`: npm treats `<*` as "nothing", the rest as "anything"
        return [_Comparator("<", semver.Version(0, 0, 0, prerelease="0"))] if op == "<" else []
    if p.patch is not None:
        return [_Comparator(op, p.floor())]
    bumped = (
        semver.Version(p.major + 1, 0, 0)
        if p.minor is None
        else semver.Version(p.major, p.minor + 1, 0)
    )
    if op == ">":  # `>1.2` means `>=1.3.0`
        return [_Comparator(">=", bumped)]
    if op == "<=":  # `<=1.2` means `<1.3.0-0`
        return [_Comparator("<", bumped.replace(prerelease="0"))]
    if op == "<":
        return [_Comparator("<", p.floor().replace(prerelease="0"))]
    return _tilde(p) if op == "=" else [_Comparator(">=", p.floor())]


def _hyphen(low: _Partial, high: _Partial) -> list[_Comparator]:
    return _primitive(">=", low) + _primitive("<=", high)


def _parse_comparator(token: str, spec: str) -> list[_Comparator]:
    match = _COMPARATOR.match(token)
    if match is None:  # pragma: no cover - tokens never contain whitespace
        raise ValueError(f"invalid version range '{spec}': '{token}'")
    op = match["op"] or ""
    partial = _parse_partial(match["version"], spec)
    if op == "^":
        return _caret(partial)
    if op.startswith("~"):
        return _tilde(partial)
    if op == "":
        return _x_range(partial)
    return _primitive(op, partial)


def _parse_set(text: str, spec: str) -> tuple[_Comparator, ...]:
    text = re.sub(r"(<=|>=|<|>|=|\^|~>?)\s+", r"\1", text.strip())
    if not text:
        return ()
    hyphen = _HYPHEN.match(text)
    if hyphen:
        low, high = (_parse_partial(hyphen[k], spec) for k in ("low", "high"))
        return tuple(_hyphen(low, high))
    comparators: list[_Comparator] = []
    for token in text.split():
        comparators.extend(_parse_comparator(token, spec))
    return tuple(comparators)


@dataclass(frozen=True, slots=True)
class VersionRange:
    """A parsed npm-style range; `VersionRange.parse("^1.2")`, then `best(versions)`.

    Prereleases only match a range that names a prerelease of the same MAJOR.MINOR.PATCH
    (npm's rule), so `^1` never picks `2.0.0-rc.1` nor `1.5.0-beta`.
    """

    spec: str
    alternatives: tuple[tuple[_Comparator, ...], ...]

    @classmethod
    @functools.lru_cache(maxsize=1024)  # immutable results
    def parse(cls, spec: str) -> VersionRange:
        """Parse `spec`; an empty spec, `*`, `x` and `latest` match every release."""
        text = spec.strip()
        if text in ("", "latest"):
            text = "*"
        alternatives = tuple(_parse_set(part, spec) for part in text.split("||"))
        return cls(spec, alternatives)

    @property
    def is_exact(self) -> bool:
        """True when the range pins a single version (`1.2.3`, `=1.2.3`)."""
        return (
            len(self.alternatives) == 1
            and len(self.alternatives[0]) == 1
            and self.alternatives[0][0].op == "="
        )

    def contains(self, version: semver.Version) -> bool:
        """Whether `version` satisfies the range."""
        return any(self._set_contains(comparators, version) for comparators in self.alternatives)

    def best(self, versions: Iterable[str]) -> str | None:
        """The highest of `versions` that satisfies the range, or None."""
        parsed = sorted(
            ((parse_version(v), v) for v in versions), key=lambda pair: pair[0], reverse=True
        )
        for version, text in parsed:
            if self.contains(version):
                return text
        return None

    @staticmethod
    def _set_contains(comparators: tuple[_Comparator, ...], version: semver.Version) -> bool:
        if not all(c.test(version) for c in comparators):
            return False
        if version.prerelease is None:
            return True
        same_tuple = (version.major, version.minor, version.patch)
        return any(
            c.version.prerelease is not None
            and c.version.prerelease != "0"
            and (c.version.major, c.version.minor, c.version.patch) == same_tuple
            for c in comparators
        )
