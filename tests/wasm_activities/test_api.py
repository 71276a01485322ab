"""The public surface of `wasm_activities` is frozen: changing it is a deliberate edit."""

from __future__ import annotations

import wasm_activities
from wasm_activities import Abi, SandboxError

EXPECTED_ALL = {
    "Abi",
    "ActivityTimeout",
    "CapabilityDenied",
    "FsGrant",
    "FuelExhausted",
    "Grants",
    "GuestError",
    "InvalidInput",
    "InvalidModule",
    "InvalidOutput",
    "Limits",
    "LogTooLarge",
    "MemoryLimitExceeded",
    "NonZeroExit",
    "OutputTooLarge",
    "PreparedModule",
    "RunResult",
    "SandboxError",
    "SandboxRuntime",
    "Usage",
    "WasmTrap",
    "get_runtime",
}
RETRYABLE = {"ActivityTimeout", "WasmTrap", "NonZeroExit", "GuestError"}


def test_all_is_frozen_and_documented() -> None:
    assert set(wasm_activities.__all__) == EXPECTED_ALL
    for name in wasm_activities.__all__:
        obj = getattr(wasm_activities, name)
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_abi_values_are_the_manifest_strings() -> None:
    assert [a.value for a in Abi] == ["command", "reactor", "component"]


def test_every_error_says_whether_retry_helps() -> None:
    errors = {
        name: getattr(wasm_activities, name)
        for name in wasm_activities.__all__
        if isinstance(getattr(wasm_activities, name), type)
        and issubclass(getattr(wasm_activities, name), SandboxError)
    }
    assert len(errors) == 13  # the base and 12 concrete errors
    assert {name for name, cls in errors.items() if cls.retryable} == RETRYABLE
