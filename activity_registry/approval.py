"""Grant approval: the capabilities an activity name has been approved for, and what is new.

Approvals belong to the name, not to a version: removing every version keeps them, so a removed
and re-registered name is compared with what was approved before, never with a clean slate.
"""

from __future__ import annotations

from collections.abc import Iterable

from activity_registry.manifest import ActivityVersion
from wasm_activities import FsGrant, Grants

__all__ = ["SAFE_GRANTS", "approved_grants", "describe_baseline", "union"]

SAFE_GRANTS = Grants()
"""What a new name may have without approval: no net, secrets, env or fs (config is data)."""


def union(*grants: Grants) -> Grants:
    """Everything any of `grants` allows (config dropped: it is data, never approved)."""
    net: list[str] = []
    secrets: list[str] = []
    env: list[str] = []
    fs: dict[tuple[str, str], str] = {}
    for each in grants:
        net += [n for n in each.net if n not in net]
        secrets += [s for s in each.secrets if s not in secrets]
        env += [e for e in each.env if e not in env]
        for grant in each.fs:
            key = (grant.host, grant.guest)
            fs[key] = "rw" if grant.mode == "rw" or fs.get(key) == "rw" else "ro"
    return Grants(
        net=net,
        secrets=secrets,
        env=env,
        fs=[FsGrant(host=host, guest=guest, mode=mode) for (host, guest), mode in fs.items()],
    )


def approved_grants(recorded: Grants | None, stored: Iterable[ActivityVersion]) -> Grants:
    """What `name` may use without approval: its recorded approvals plus its stored versions'
    grants (versions registered before approvals were recorded count as approved)."""
    return union(recorded or SAFE_GRANTS, *(v.grants for v in stored if not v.is_native))


def describe_baseline(name: str, recorded: Grants | None, stored: Iterable[ActivityVersion]) -> str:
    """How an error names what a new version was compared with."""
    if recorded is None and not any(not v.is_native for v in stored):
        return "the default for a new activity (no grants)"
    return f"the grants approved for {name}"
