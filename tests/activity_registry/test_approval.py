"""Grant approval: a new name starts from no grants, approvals accumulate per name and outlive
removed versions (red-team issue 12, finding 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from activity_registry import GrantsWidenedError, Registry
from activity_registry.approval import union
from tests.activity_registry.activity_files import ActivityFactory
from wasm_activities import FsGrant, Grants

HOSTILE_GRANTS = (
    'net = ["*.com"]\nenv = ["AWS_SECRET_ACCESS_KEY"]\nfs = [{ host = "/", guest = "/host", '
    'mode = "rw" }]'
)


async def test_first_version_with_grants_needs_approval(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    manifest = make_activity(grants=HOSTILE_GRANTS)

    with pytest.raises(GrantsWidenedError) as refused:
        await registry.register(manifest)

    assert refused.value.widened == [
        "net: +*.com",
        "env: +AWS_SECRET_ACCESS_KEY",
        "fs: +/ -> /host (rw)",
    ]
    assert refused.value.previous == "the default for a new activity (no grants)"
    message = str(refused.value)
    assert "echo@1.0.0 asks for grants beyond the default for a new activity" in message
    assert "--approve-grants" in message and "approve_grants=True" in message
    assert await registry.list() == []

    approved = await registry.register(manifest, approve_grants=True)
    assert approved.created is True
    assert approved.widened == refused.value.widened


async def test_first_version_within_the_safe_default_needs_no_approval(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    # config is data the guest reads, not a capability: it needs no approval
    result = await registry.register(make_activity(grants='config = { model = "small" }'))
    assert result.created is True
    assert result.widened == []


async def test_removal_does_not_reset_approvals(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    first = make_activity(version="1.0.0", grants='net = ["api.example.com"]')
    await registry.register(first, approve_grants=True)
    await registry.remove("echo", "1.0.0")
    assert await registry.list() == []

    # the grants approved before stay approved...
    same = await registry.register(
        make_activity(version="1.0.0", grants='net = ["api.example.com"]')
    )
    assert same.created is True
    assert same.widened == []
    await registry.remove("echo", "1.0.0")

    # ...and anything new needs approval again, though no version of the name is left
    wider = make_activity(version="2.0.0", grants='net = ["api.example.com", "evil.example"]')
    with pytest.raises(GrantsWidenedError) as refused:
        await registry.register(wider)
    assert refused.value.widened == ["net: +evil.example"]
    assert refused.value.previous == "the grants approved for echo"


async def test_approvals_accumulate_across_versions(
    registry: Registry, make_activity: ActivityFactory
) -> None:
    await registry.register(
        make_activity(version="1.0.0", grants='secrets = ["KEY"]'), approve_grants=True
    )
    await registry.register(make_activity(version="1.1.0"))  # narrower: nothing to approve
    # KEY was approved for 1.0.0, so asking for it again is not new; OTHER is.
    with pytest.raises(GrantsWidenedError) as refused:
        await registry.register(make_activity(version="1.2.0", grants='secrets = ["KEY", "OTHER"]'))
    assert refused.value.widened == ["secrets: +OTHER"]


async def test_approvals_survive_a_new_registry(
    db_path: Path, make_activity: ActivityFactory
) -> None:
    async with Registry(db_path) as first:
        manifest = make_activity(grants='env = ["MODEL"]')
        await first.register(manifest, approve_grants=True)
        await first.remove("echo", "1.0.0")
    async with Registry(db_path) as second:
        assert (await second.register(manifest)).widened == []


def test_union_keeps_the_widest_fs_mode_and_drops_config() -> None:
    ro = Grants(fs=[FsGrant(host="/d", guest="/d", mode="ro")], config={"a": "b"}, net=["x.io"])
    rw = Grants(fs=[FsGrant(host="/d", guest="/d", mode="rw")], net=["x.io", "y.io"])
    merged = union(ro, rw)
    assert merged.fs == [FsGrant(host="/d", guest="/d", mode="rw")]
    assert merged.net == ["x.io", "y.io"]
    assert merged.config == {}
