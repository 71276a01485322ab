"""The public surface is frozen: changing it is a deliberate edit of this test."""

from __future__ import annotations

import activity_registry


def test_public_names() -> None:
    assert sorted(activity_registry.__all__) == [
        "ActivityNotFoundError",
        "ActivityVersion",
        "CircuitBreakerPolicy",
        "CorruptModuleError",
        "GrantsWidenedError",
        "Manifest",
        "ManifestError",
        "RegistrationResult",
        "Registry",
        "RegistryError",
        "RetryPolicy",
        "SchemaViolationError",
        "VersionConflictError",
        "VersionRange",
        "parse_spec",
    ]
    for name in activity_registry.__all__:
        assert getattr(activity_registry, name).__doc__, f"{name} needs a docstring"


def test_errors_share_one_base() -> None:
    for name in activity_registry.__all__:
        obj = getattr(activity_registry, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, activity_registry.RegistryError)
            assert obj.retryable is False
