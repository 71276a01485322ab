"""Size limits on what enters a workflow's history: input, state, activity arguments and
results, signal payloads and error text. Pure configuration; knows nothing about storage.

A value is measured as the UTF-8 length of the compact JSON the store writes
(`loom._json.dumps`), so a limit means the same thing on every backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from loom._json import JSON, dumps
from loom.exceptions import ConfigurationError, PayloadTooLargeError

KIB = 1024
MIB = 1024 * KIB

DEFAULT_MAX_ERROR_CHARS = 64 * KIB
ENV_PREFIX = "LOOM_"
TRUNCATION_MARKER = "… [{cut} more characters cut: error text is limited to {limit} characters]"
"""Appended to clipped error text, so a reader knows it is not the whole message."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest values Loom accepts into a workflow's history.

    Each limit guards one point of entry, where an oversized value is refused with
    `PayloadTooLargeError` before anything is written:

    - `max_input_bytes`: workflow input, at `start()` (and a child's, at `ctx.start_workflow`).
    - `max_state_bytes`: workflow state after a workflow task; the workflow fails instead
      of committing it.
    - `max_args_bytes`: arguments of one `ctx.activity(...)` call; that call fails with a
      non-retryable `ActivityFailedError`, recorded in history.
    - `max_result_bytes`: an activity's result; the attempt is recorded as a non-retryable
      failure (the result itself is dropped).
    - `max_signal_bytes`: a signal payload, at `handle.signal()`.
    - `max_error_chars`: error messages and tracebacks kept in history are cut to this many
      characters, with a marker saying how much was cut.

    Sizes count the UTF-8 bytes of the compact JSON encoding. Defaults keep one history row
    far below what SQLite and PostgreSQL handle well; every limit can be raised with its
    `LOOM_MAX_*` environment variable (see `from_env`) or by passing `Limits(...)` to
    `loom.Worker(limits=...)` / `loom.configure(limits=...)`.
    """

    max_input_bytes: int = 2 * MIB
    max_state_bytes: int = 8 * MIB
    max_args_bytes: int = 2 * MIB
    max_result_bytes: int = 2 * MIB
    max_signal_bytes: int = 2 * MIB
    max_error_chars: int = DEFAULT_MAX_ERROR_CHARS

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{item.name} must be an int >= 1, got {value!r}")

    @classmethod
    def from_env(cls) -> Limits:
        """Defaults, overridden by `LOOM_MAX_INPUT_BYTES`, `LOOM_MAX_STATE_BYTES`,
        `LOOM_MAX_ARGS_BYTES`, `LOOM_MAX_RESULT_BYTES`, `LOOM_MAX_SIGNAL_BYTES` and
        `LOOM_MAX_ERROR_CHARS` (positive integers; a bad value raises ConfigurationError, a
        ValueError, naming the variable).
        """
        key = tuple(os.environ.get(name) for name in _ENV_NAMES)
        cached = _from_env_cache.get(key)
        if cached is None:
            cached = _parse_env(key)
            _from_env_cache.clear()  # one entry: the environment rarely changes at runtime
            _from_env_cache[key] = cached
        return cached

    def check(self, what: str, value: JSON, field: str) -> int:
        """Raise PayloadTooLargeError if `value` encodes to more than limit `field` allows.

        Returns the encoded size, so callers can record it.
        """
        limit: int = getattr(self, field)
        size = encoded_size(value)
        if size > limit:
            raise PayloadTooLargeError(what=what, size=size, limit=limit, field=field)
        return size


def env_name(field: str) -> str:
    """The environment variable that sets limit `field`, e.g. LOOM_MAX_INPUT_BYTES."""
    return ENV_PREFIX + field.upper()


_FIELD_NAMES = tuple(item.name for item in fields(Limits))
_ENV_NAMES = tuple(env_name(name) for name in _FIELD_NAMES)
_from_env_cache: dict[tuple[str | None, ...], Limits] = {}


def _parse_env(values: tuple[str | None, ...]) -> Limits:
    overrides: dict[str, int] = {}
    for field, name, raw in zip(_FIELD_NAMES, _ENV_NAMES, values, strict=True):
        if raw is None or not raw.strip():
            continue
        try:
            overrides[field] = int(raw.strip().replace("_", ""))
        except ValueError:
            overrides[field] = 0
        if overrides[field] < 1:
            raise ConfigurationError(
                f"{name}={raw!r} is not a positive whole number; set it to a size in "
                f"{'characters' if field.endswith('chars') else 'bytes'} (e.g. {name}=4194304) "
                f"or unset it for the default"
            )
    return Limits(**overrides)


def encoded_size(value: JSON) -> int:
    """UTF-8 length of `value`'s compact JSON (ASCII text, the common case, is not encoded
    a second time just to be measured)."""
    text = dumps(value)
    return len(text) if text.isascii() else len(text.encode())


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    # The marker's own length depends on the count it shows; size it for the worst case.
    room = limit - len(TRUNCATION_MARKER.format(cut=len(text), limit=limit))
    if room <= 0:
        return text[:limit]  # a limit shorter than the marker: keep what fits
    return text[:room] + TRUNCATION_MARKER.format(cut=len(text) - room, limit=limit)
