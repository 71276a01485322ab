"""Versioned activities: manifests, JSON Schemas, semver resolution, content-addressed modules.

Knows nothing about workflows or replay (the engine builds on it); runs modules through
`wasm_activities`. Quick use::

    async with Registry("loom.db") as registry:
        await registry.register("examples/activities/word_count/activity.toml")
        activity = await registry.resolve("word-count@^1")
        result = await registry.run(activity, {"text": "a b c"})
"""

from __future__ import annotations

from activity_registry.exceptions import (
    ActivityNotFoundError,
    CorruptModuleError,
    GrantsWidenedError,
    ManifestError,
    RegistryError,
    SchemaViolationError,
    VersionConflictError,
)
from activity_registry.manifest import ActivityVersion, CircuitBreakerPolicy, Manifest, RetryPolicy
from activity_registry.registry import RegistrationResult, Registry, parse_spec
from activity_registry.version_range import VersionRange

__all__ = [
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
