"""Host imports: HTTP allowlist enforced before connecting, secret placeholders substituted only
for granted hosts and never visible to the guest, config and log."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.wasm_activities.conftest import LoopbackServer
from wasm_activities import (
    ActivityTimeout,
    CapabilityDenied,
    Grants,
    Limits,
    PreparedModule,
    SandboxRuntime,
)

Prepared = Callable[[str], PreparedModule]
SECRET = "sk-live-7f3a9c1e2d4b"


def xor_hex(text: str) -> str:
    return bytes(b ^ 0x5A for b in text.encode()).hex()


def call(
    runtime: SandboxRuntime,
    prepared: Prepared,
    request: dict[str, Any],
    grants: Grants,
    secrets: dict[str, str] | None = None,
) -> dict[str, Any]:
    payload = {"request": json.dumps(request), "needle_xor": xor_hex(SECRET)}
    result = runtime.run_sync(prepared("http_client.c"), payload, grants=grants, secrets=secrets)
    assert SECRET not in json.dumps(result.output) and SECRET not in result.logs
    output: dict[str, Any] = result.output
    output["http_calls"] = result.usage.http_calls
    output["logs"] = result.logs
    return output


def test_request_to_ungranted_host_is_denied_before_connecting(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    url = f"http://{http_server.host}/steal"
    for grants in [Grants(), Grants(net=["example.com", "127.0.0.1:1"])]:
        with pytest.raises(CapabilityDenied, match=r"127\.0\.0\.1") as info:
            call(runtime, prepared, {"url": url}, grants)
        assert not info.value.retryable
    assert http_server.connections == 0


def test_granted_request_gets_secret_while_guest_sees_only_placeholder(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    grants = Grants(net=[http_server.grant], secrets=["API_KEY"])
    request = {
        "method": "POST",
        "url": f"http://{http_server.host}/v1?key={{{{secret:API_KEY}}}}",
        "headers": {"Authorization": "Bearer {{secret:API_KEY}}"},
        "body": '{"token": "{{secret:API_KEY}}"}',
    }
    out = call(runtime, prepared, request, grants, secrets={"API_KEY": SECRET})
    assert http_server.connections == 1
    seen = http_server.requests[0]
    assert seen["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert seen["path"] == f"/v1?key={SECRET}" and SECRET in seen["body"]
    response = json.loads(out["response"])
    assert response["status"] == 200
    # The server echoed the secret back; the host redacted it before the guest could see it.
    echoed = json.loads(response["body"])["seen"]
    assert echoed["headers"]["Authorization"] == "Bearer {{secret:API_KEY}}"
    assert out["leaks"] == 0, "secret bytes found in guest linear memory"
    assert out["config"] == "{{secret:API_KEY}}"
    assert out["http_calls"] == 1 and out["code"] == 0


def test_leak_scan_finds_a_secret_that_does_enter_memory(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    """Control for the leak check: a secret sent as plain guest data IS found by the scan."""
    request = {"url": f"http://{http_server.host}/?{SECRET}"}
    payload = {"request": json.dumps(request), "needle_xor": xor_hex(SECRET)}
    grants = Grants(net=[http_server.grant])
    output = runtime.run_sync(prepared("http_client.c"), payload, grants=grants).output
    assert output["leaks"] >= 1


def test_ungranted_secret_is_denied_and_never_sent(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    grants = Grants(net=[http_server.grant])  # host granted, secret not
    request = {"url": f"http://{http_server.host}/", "headers": {"X": "{{secret:API_KEY}}"}}
    with pytest.raises(CapabilityDenied, match="API_KEY") as info:
        call(runtime, prepared, request, grants, secrets={"API_KEY": SECRET})
    assert SECRET not in str(info.value) and SECRET not in json.dumps(info.value.to_json())
    assert http_server.connections == 0


def test_secret_cannot_steer_the_destination(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    grants = Grants(net=["*.example.com", http_server.grant], secrets=["HOST"])
    request = {"url": "http://{{secret:HOST}}.example.com/"}
    with pytest.raises(CapabilityDenied):
        call(runtime, prepared, request, grants, secrets={"HOST": "127.0.0.1"})
    assert http_server.connections == 0


def test_network_error_is_returned_to_the_guest(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = call(
        runtime,
        prepared,
        {"url": f"http://127.0.0.1:{port}/"},
        Grants(net=[f"http://127.0.0.1:{port}"]),
    )
    assert out["code"] == -2
    assert "failed" in json.loads(out["response"])["error"]


def test_bad_request_json_is_returned_to_the_guest(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    payload = {"request": "not json", "needle_xor": ""}
    out = runtime.run_sync(prepared("http_client.c"), payload).output
    assert out["code"] == -3 and "not JSON" in out["response"]


def test_config_and_logs_reach_the_guest(runtime: SandboxRuntime, prepared: Prepared) -> None:
    result = runtime.run_sync(
        prepared("py-greet"),
        {"name": "Ada"},
        grants=Grants(config={"salutation": "Bonjour"}),
        limits=Limits(memory_mb=128, timeout_ms=10_000),
    )
    assert result.output["greeting"] == "Bonjour, Ada."
    assert result.logs == "greeting 3 characters\n"


def test_slow_server_counts_against_the_activity_deadline(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    http_server.delay_s = 1.0
    grants = Grants(net=[http_server.grant])
    payload = {"request": json.dumps({"url": f"http://{http_server.host}/slow"}), "needle_xor": ""}
    begin = time.monotonic()
    with pytest.raises(ActivityTimeout):
        runtime.run_sync(
            prepared("http_client.c"), payload, grants=grants, limits=Limits(timeout_ms=300)
        )
    assert time.monotonic() - begin < 0.6


def test_header_injection_is_refused_without_leaking_the_secret(
    runtime: SandboxRuntime, prepared: Prepared, http_server: LoopbackServer
) -> None:
    grants = Grants(net=[http_server.grant], secrets=["API_KEY"])
    request = {
        "url": f"http://{http_server.host}/",
        "headers": {"X": "a\r\nInjected: {{secret:API_KEY}}"},
    }
    out = call(runtime, prepared, request, grants, secrets={"API_KEY": SECRET})
    assert out["code"] == -3 and "refused" in out["response"]
    assert http_server.connections == 0


def test_a_secret_never_travels_over_plain_http_beyond_loopback(
    runtime: SandboxRuntime, prepared: Prepared
) -> None:
    """Refused before any connection (the address is unroutable: nothing could answer)."""
    grants = Grants(net=["http://10.255.255.1:9"], secrets=["API_KEY"])
    request = {"url": "http://10.255.255.1:9/", "headers": {"Authorization": "{{secret:API_KEY}}"}}
    with pytest.raises(CapabilityDenied, match="plain http"):
        call(runtime, prepared, request, grants, secrets={"API_KEY": SECRET})
