"""Grants: net pattern matching, widening diffs, and default-deny fs/env enforced in the guest."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from wasm_activities import FsGrant, Grants, PreparedModule, SandboxRuntime

Prepared = Callable[[str], PreparedModule]


@pytest.mark.parametrize(
    ("pattern", "url", "allowed"),
    [
        ("api.example.com", "https://api.example.com/v1", True),
        # Without a scheme a grant means https on 443: plain http is granted by name.
        ("api.example.com", "http://api.example.com/", False),
        ("api.example.com", "https://api.example.com:8443/", False),
        ("api.example.com:8443", "https://api.example.com:8443/", True),
        ("http://api.example.com:8080", "http://api.example.com:8080/", True),
        ("http://api.example.com:8080", "https://api.example.com:8080/", False),
        ("api.example.com", "https://evil.com/?api.example.com", False),
        ("api.example.com", "https://api.example.com.evil.com/", False),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/x", False),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/x", True),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8081/x", False),
        ("https://api.example.com", "http://api.example.com/", False),
        ("https://api.example.com", "https://api.example.com/", True),
        ("*.example.com", "https://a.b.example.com/", True),
        ("*.example.com", "https://example.com/", False),
        ("*.example.com", "https://badexample.com/", False),
        ("api.example.com", "ftp://api.example.com/", False),
        ("api.example.com", "https://user@api.example.com@evil.com/", False),
        ("http://[::1]:8080", "http://[::1]:8080/x", True),
        ("[::1]", "https://[::1]/x", True),
        ("http://[::1]:8080", "http://[::2]:8080/x", False),
    ],
)
def test_net_patterns(pattern: str, url: str, allowed: bool) -> None:
    assert Grants(net=[pattern]).allows_url(url) is allowed


def test_default_grants_allow_nothing() -> None:
    grants = Grants()
    assert not grants.allows_url("http://127.0.0.1/")
    assert grants.secrets == grants.env == grants.fs == [] and grants.config == {}


@pytest.mark.parametrize("bad", ["ftp://x.com", "a b", "host:99999", "http://x.com/path", ""])
def test_malformed_net_patterns_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        Grants(net=[bad])


def test_grants_are_frozen_and_strict() -> None:
    with pytest.raises(ValidationError):
        Grants(network=["x"])  # type: ignore[call-arg]  # the typo is the point
    with pytest.raises(ValidationError):
        FsGrant(host=".", guest="relative")
    with pytest.raises(ValidationError):
        Grants(secrets=["NOT-AN-IDENTIFIER"])


def test_widened_from_lists_only_new_capabilities() -> None:
    old = Grants(
        net=["*.example.com"],
        secrets=["A"],
        fs=[FsGrant(host="./data", guest="/data")],
        config={"model": "small"},
    )
    new = Grants(
        net=["api.example.com", "evil.com"],
        secrets=["A", "B"],
        env=["MODEL"],
        fs=[FsGrant(host="./data", guest="/data", mode="rw"), FsGrant(host="/tmp", guest="/t")],
        config={"model": "large"},
    )
    assert new.widened_from(old) == [
        "net: +evil.com",
        "secrets: +B",
        "env: +MODEL",
        "fs: ./data -> /data ro -> rw",
        "fs: +/tmp -> /t (ro)",
    ]
    assert new.widened_from(new) == []
    assert old.widened_from(new) == ["net: +*.example.com"]  # a wildcard widens a single host
    assert Grants().widened_from(Grants()) == []


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello from the host")
    (tmp_path / "outside.txt").write_text("must stay unreadable")
    return data


def probe(runtime: SandboxRuntime, prepared: Prepared, grants: Grants, **request: str) -> dict:  # type: ignore[type-arg]
    output = runtime.run_sync(prepared("probe.c"), request, grants=grants).output
    assert isinstance(output, dict)
    return output


def test_no_fs_grant_means_no_files(runtime: SandboxRuntime, prepared: Prepared) -> None:
    out = probe(runtime, prepared, Grants(), read="/etc/passwd", write="/tmp/pwned")
    assert out["read"].startswith("error:") and out["write"].startswith("error:")
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/data/../outside.txt", "../outside.txt", "/data/../../etc/passwd"]
)
def test_reads_outside_a_preopen_fail(
    runtime: SandboxRuntime, prepared: Prepared, data_dir: Path, path: str
) -> None:
    grants = Grants(fs=[FsGrant(host=str(data_dir), guest="/data")])
    assert probe(runtime, prepared, grants, read="/data/hello.txt")["read"] == "hello from the host"
    out = probe(runtime, prepared, grants, read=path)
    assert out["read"].startswith("error:"), out


def test_symlink_escape_is_blocked(
    runtime: SandboxRuntime, prepared: Prepared, data_dir: Path
) -> None:
    os.symlink("/etc/passwd", data_dir / "link")
    grants = Grants(fs=[FsGrant(host=str(data_dir), guest="/data")])
    assert probe(runtime, prepared, grants, read="/data/link")["read"].startswith("error:")


@pytest.mark.parametrize("target", ["/etc", "../../..", "hello.txt"])
def test_a_guest_cannot_create_symlinks_even_in_a_rw_grant(
    runtime: SandboxRuntime, prepared: Prepared, data_dir: Path, target: str
) -> None:
    """Following one out of the preopen was already blocked, but a created link to `/etc`
    would be followed by the next host process that looks in the directory."""
    grants = Grants(fs=[FsGrant(host=str(data_dir), guest="/data", mode="rw")])
    out = probe(runtime, prepared, grants, symlink="/data/escape", target=target)
    assert out["symlink"] == "error:EPERM"
    assert not (data_dir / "escape").is_symlink()


def test_ro_grant_cannot_be_written(
    runtime: SandboxRuntime, prepared: Prepared, data_dir: Path
) -> None:
    grants = Grants(fs=[FsGrant(host=str(data_dir), guest="/data", mode="ro")])
    for target in ["/data/new.txt", "/data/hello.txt"]:
        assert probe(runtime, prepared, grants, write=target)["write"].startswith("error:")
    assert not (data_dir / "new.txt").exists()
    assert (data_dir / "hello.txt").read_text() == "hello from the host"


def test_rw_grant_can_be_written(
    runtime: SandboxRuntime, prepared: Prepared, data_dir: Path
) -> None:
    grants = Grants(fs=[FsGrant(host=str(data_dir), guest="/data", mode="rw")])
    assert probe(runtime, prepared, grants, write="/data/new.txt")["write"] == "ok"
    assert (data_dir / "new.txt").read_text() == "pwned"


def test_env_is_not_inherited_only_granted(
    runtime: SandboxRuntime, prepared: Prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOOM_TEST_MODEL", "small")
    monkeypatch.setenv("LOOM_TEST_TOKEN", "do-not-leak")
    assert probe(runtime, prepared, Grants(), env="LOOM_TEST_MODEL")["env"] is None
    granted = Grants(env=["LOOM_TEST_MODEL"])
    assert probe(runtime, prepared, granted, env="LOOM_TEST_MODEL")["env"] == "small"
    assert probe(runtime, prepared, granted, env="LOOM_TEST_TOKEN")["env"] is None


def test_missing_fs_grant_directory_is_a_clear_error(
    runtime: SandboxRuntime, prepared: Prepared, tmp_path: Path
) -> None:
    grants = Grants(fs=[FsGrant(host=str(tmp_path / "missing"), guest="/data")])
    with pytest.raises(ValueError, match="does not exist"):
        runtime.run_sync(prepared("probe.c"), {}, grants=grants)


def test_env_reaches_a_call_in_a_sandbox_process_as_the_worker_has_it_now(
    runtime: SandboxRuntime, prepared: Prepared, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call with an fs grant runs in a sandbox process, forked from a server that may have
    started long before: the granted values are the worker's at the call."""
    grants = Grants(fs=[FsGrant(host=str(data_dir), guest="/data")], env=["LOOM_TEST_MODEL"])
    probe(runtime, prepared, grants)  # the fork server and a child exist from here on
    monkeypatch.setenv("LOOM_TEST_MODEL", "set-later")
    monkeypatch.setenv("LOOM_TEST_TOKEN", "do-not-leak")
    assert probe(runtime, prepared, grants, env="LOOM_TEST_MODEL")["env"] == "set-later"
    assert probe(runtime, prepared, grants, env="LOOM_TEST_TOKEN")["env"] is None
    monkeypatch.delenv("LOOM_TEST_MODEL")
    assert probe(runtime, prepared, grants, env="LOOM_TEST_MODEL")["env"] is None
