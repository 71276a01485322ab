"""Size limits at every point of entry: workflow input, signal payloads, activity arguments
and results (native and WebAssembly), workflow state, child input and error text.

Each refusal names the limit and how to raise it; history never holds the oversized value;
raising the limit lets the same payload through. Limits are tiny (1 KiB) so tests stay fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import loom
from activity_registry import Registry
from loom._json import dumps
from loom.client import get_store
from loom.history import Event, EventKind
from loom.limits import KIB, MIB, Limits
from loom.replay import WorkflowRun
from tests.activity_registry.activity_files import constant_wat, write_activity

SMALL = Limits(
    max_input_bytes=KIB,
    max_state_bytes=KIB,
    max_args_bytes=KIB,
    max_result_bytes=KIB,
    max_signal_bytes=KIB,
    max_error_chars=KIB,
)
BIG = "x" * (2 * KIB)
CACHE_SIZES = [pytest.param(10_000, id="cached"), pytest.param(0, id="replay-always")]

ran: list[str] = []


@pytest.fixture(autouse=True)
def _reset_client_limits() -> Any:
    yield
    loom.configure(database=None)


@loom.activity(retry=3, initial_interval=0.01)
async def echo_length(text: str) -> int:
    ran.append("echo_length")
    return len(text)


@loom.activity(retry=3, initial_interval=0.01)
async def produce(size: int) -> str:
    ran.append("produce")
    return "y" * size


@loom.activity(retry=1)
async def explode(size: int) -> str:
    raise ValueError("bad url: " + "u" * size)


@loom.workflow(name="LimitsEcho")
class Echo(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.length = await ctx.activity(echo_length, ctx.input["text"])


@loom.workflow(name="LimitsCatch")
class CatchAndGoOn(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Catches the refusal and carries on: replay must issue the same commands after it.

    The first call makes the refusal happen in the activation an activity result leads to
    (the worker's complete-and-continue path when the run is cached)."""

    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.first = await ctx.activity(echo_length, "ab")
        try:
            await ctx.activity(echo_length, ctx.input["text"])
        except loom.ActivityFailedError as err:
            ctx.state.refused = err.error_type
        ctx.state.after = await ctx.activity(echo_length, "small")
        await ctx.wait_for_signal("go")
        ctx.state.done = True


@loom.workflow(name="LimitsProduce")
class Produce(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.value = await ctx.activity(produce, ctx.input["size"])


@loom.workflow(name="LimitsExplode")
class Explode(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        await ctx.activity(explode, ctx.input["size"])


@loom.workflow(name="LimitsGrow")
class Grow(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def first(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.small = "kept"
        await ctx.sleep(0)

    @loom.step
    async def grow(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.small = "changed, then refused with the rest"
        ctx.state.rows = []
        for _ in range(ctx.input["items"]):
            ctx.state.rows.append("z" * 100)
        await ctx.sleep(0)


@loom.workflow(name="LimitsSpike")
class Spike(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """Sets a huge value and shrinks it again in one task: the change itself is refused."""

    @loom.step
    async def spike(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.blob = "b" * ctx.input["size"]
        ctx.state.blob = "small"


@loom.workflow(name="LimitsParent")
class Parent(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def spawn(self, ctx):  # type: ignore[no-untyped-def]
        try:
            await ctx.start_workflow(Echo, {"text": ctx.input["text"]})
        except loom.WorkflowExecutionError as err:
            ctx.state.child_error = err.error_type


@loom.workflow(name="LimitsWasm")
class CallWasm(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    @loom.step
    async def call(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.out = await ctx.activity(ctx.input["spec"], ctx.input.get("payload", {}))


def largest_event(events: list[Event]) -> int:
    return max(len(dumps(e.payload).encode()) for e in events)


def assert_names_the_limit(message: str, field: str) -> None:
    assert "over the 1.0 KiB limit" in message
    assert f"LOOM_{field.upper()}" in message
    assert f"Limits({field}=...)" in message


# -- configuration ---------------------------------------------------------------------


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Limits() == Limits(
        max_input_bytes=2 * MIB,
        max_state_bytes=8 * MIB,
        max_args_bytes=2 * MIB,
        max_result_bytes=2 * MIB,
        max_signal_bytes=2 * MIB,
        max_error_chars=64 * KIB,
    )
    monkeypatch.setenv("LOOM_MAX_STATE_BYTES", "4096")
    monkeypatch.setenv("LOOM_MAX_ERROR_CHARS", "100")
    limits = Limits.from_env()
    assert (limits.max_state_bytes, limits.max_error_chars) == (4096, 100)
    assert limits.max_input_bytes == 2 * MIB


@pytest.mark.parametrize("value", ["lots", "-1", "0", "1.5"])
def test_a_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LOOM_MAX_SIGNAL_BYTES", value)
    with pytest.raises(ValueError, match=r"LOOM_MAX_SIGNAL_BYTES=.* is not a positive whole"):
        Limits.from_env()


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match=r"Limits.max_args_bytes must be an int >= 1"):
        Limits(max_args_bytes=0)


# -- the client: input and signals -----------------------------------------------------


async def test_oversized_input_is_refused_before_anything_is_written(db_path) -> None:
    loom.configure(database=db_path, limits=SMALL)
    with pytest.raises(loom.PayloadTooLargeError) as info:
        await Echo.start({"text": BIG}, workflow_id="too-big")
    assert str(info.value).startswith("input of workflow 'LimitsEcho' is 2.0 KiB (")
    assert_names_the_limit(str(info.value), "max_input_bytes")
    assert isinstance(info.value, ValueError)
    assert await get_store().get_workflow("too-big") is None

    loom.configure(database=db_path, limits=Limits(max_input_bytes=4 * KIB))
    handle = await Echo.start({"text": BIG}, workflow_id="too-big")
    assert await handle.status() is loom.WorkflowStatus.PENDING


async def test_the_environment_raises_the_input_limit(db_path, monkeypatch) -> None:
    monkeypatch.setenv("LOOM_MAX_INPUT_BYTES", "1024")
    with pytest.raises(loom.PayloadTooLargeError, match="LOOM_MAX_INPUT_BYTES"):
        await Echo.start({"text": BIG})
    monkeypatch.setenv("LOOM_MAX_INPUT_BYTES", "4096")
    await Echo.start({"text": BIG})


async def test_oversized_signal_is_refused(db_path, make_worker) -> None:
    loom.configure(database=db_path, limits=SMALL)
    async with make_worker([CatchAndGoOn], [echo_length]):
        handle = await CatchAndGoOn.start({"text": "hi"})
        with pytest.raises(loom.PayloadTooLargeError) as info:
            await handle.signal("go", {"blob": BIG})
        assert str(info.value).startswith("payload of signal 'go' is 2.0 KiB")
        assert_names_the_limit(str(info.value), "max_signal_bytes")
        loom.configure(database=db_path, limits=Limits(max_signal_bytes=4 * KIB))
        await handle.signal("go", {"blob": BIG})
        assert (await handle.result(timeout=10))["done"] is True
    events = await get_store().list_events(handle.workflow_id)
    assert sum(e.kind is EventKind.SIGNAL_RECEIVED for e in events) == 1


# -- activity arguments ----------------------------------------------------------------


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_oversized_arguments_fail_the_call_not_the_worker(make_worker, cache) -> None:
    ran.clear()
    async with make_worker([Echo], [echo_length], limits=SMALL, max_cached_workflows=cache):
        handle = await Echo.start({"text": BIG})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=10)
    assert info.value.error_type == "PayloadTooLargeError"
    assert info.value.retryable is False
    assert "argument payload of activity 'echo_length' is 2.0 KiB" in info.value.error_message
    assert_names_the_limit(info.value.error_message, "max_args_bytes")
    assert ran == []  # refused before any task was created
    events = await get_store().list_events(handle.workflow_id)
    scheduled = next(e for e in events if e.kind is EventKind.ACTIVITY_SCHEDULED)
    assert scheduled.payload["input"] is None
    assert scheduled.payload["size"] > KIB
    failed = next(e for e in events if e.kind is EventKind.ACTIVITY_FAILED)
    assert failed.payload["refused"] is True
    assert BIG not in dumps([e.payload for e in events if e.kind is not EventKind.WORKFLOW_STARTED])


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_a_caught_refusal_replays_under_other_limits(make_worker, cache) -> None:
    """The refusal is history: a worker with a higher limit replays it, it does not re-run it."""
    async with make_worker([CatchAndGoOn], [echo_length], limits=SMALL):
        handle = await CatchAndGoOn.start({"text": BIG})
        while "after" not in await handle.state():
            await asyncio.sleep(0.02)
    roomy = Limits(max_args_bytes=MIB)
    async with make_worker([CatchAndGoOn], [echo_length], limits=roomy, max_cached_workflows=cache):
        await handle.signal("go")
        state = await handle.result(timeout=10)
    assert state == {"first": 2, "refused": "PayloadTooLargeError", "after": 5, "done": True}
    events = await get_store().list_events(handle.workflow_id)
    replayed = WorkflowRun(CatchAndGoOn.compile(), handle.workflow_id, limits=SMALL)
    replayed.apply(events)
    assert replayed.failure is None
    # No new command: the refusal is read back, not checked (and recorded) again.
    activation = replayed.take_activation()
    assert [e.kind for e in activation.events] == [EventKind.WORKFLOW_COMPLETED]
    assert activation.state == state

    async with make_worker([Echo], [echo_length], limits=roomy):
        assert await (await Echo.start({"text": BIG})).result(timeout=10) == {"length": 2 * KIB}


# -- activity results ------------------------------------------------------------------


async def test_oversized_native_result_is_a_non_retryable_failure(make_worker) -> None:
    ran.clear()
    async with make_worker([Produce], [produce], limits=SMALL):
        handle = await Produce.start({"size": 2 * KIB})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=10)
    assert info.value.error_type == "PayloadTooLargeError"
    assert "result of activity 'produce' is 2.0 KiB" in info.value.error_message
    assert_names_the_limit(info.value.error_message, "max_result_bytes")
    assert ran == ["produce"]  # retrying would return the same size: one attempt only
    events = await get_store().list_events(handle.workflow_id)
    assert largest_event(events) < 2 * KIB

    async with make_worker([Produce], [produce], limits=Limits(max_result_bytes=4 * KIB)):
        handle = await Produce.start({"size": 2 * KIB})
        assert (await handle.result(timeout=10))["value"] == "y" * 2 * KIB


async def test_oversized_wasm_result_is_a_non_retryable_failure(
    db_path, make_worker, tmp_path: Path
) -> None:
    output = dumps({"v": "w" * (2 * KIB)})
    manifest = write_activity(tmp_path, name="bulky", wat=constant_wat(output))
    async with Registry(db_path) as registry:
        await registry.register(manifest)
    async with make_worker([CallWasm], limits=SMALL):
        handle = await CallWasm.start({"spec": "bulky@^1"})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=20)
    assert info.value.error_type == "PayloadTooLargeError"
    assert "result of activity 'bulky@1.0.0' is 2.0 KiB" in info.value.error_message
    events = await get_store().list_events(handle.workflow_id)
    failed = next(e for e in events if e.kind is EventKind.ACTIVITY_FAILED)
    assert failed.payload["attempt"] == 1
    assert largest_event(events) < 2 * KIB

    async with make_worker([CallWasm], limits=Limits(max_result_bytes=4 * KIB)):
        handle = await CallWasm.start({"spec": "bulky@^1"})
        assert await handle.result(timeout=20) == {"out": {"v": "w" * (2 * KIB)}}


# -- workflow state --------------------------------------------------------------------


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_oversized_state_fails_the_workflow_and_keeps_the_last_state(
    make_worker, cache
) -> None:
    async with make_worker([Grow], limits=SMALL, max_cached_workflows=cache):
        handle = await Grow.start({"items": 20})
        with pytest.raises(loom.WorkflowExecutionError) as info:
            await handle.result(timeout=10)
    assert info.value.error_type == "PayloadTooLargeError"
    assert "state of workflow" in info.value.error_message
    assert_names_the_limit(info.value.error_message, "max_state_bytes")
    assert await handle.state() == {"small": "kept"}
    events = await get_store().list_events(handle.workflow_id)
    assert not any(e.kind is EventKind.STEP_STARTED and e.payload["key"] == "grow" for e in events)
    assert largest_event(events) < KIB

    async with make_worker([Grow], limits=Limits(max_state_bytes=8 * KIB)):
        state = await (await Grow.start({"items": 20})).result(timeout=10)
    assert len(state["rows"]) == 20


async def test_a_state_change_over_the_limit_is_refused_even_if_undone(make_worker) -> None:
    async with make_worker([Spike], limits=SMALL):
        handle = await Spike.start({"size": 2 * KIB})
        with pytest.raises(loom.WorkflowExecutionError) as info:
            await handle.result(timeout=10)
    assert "a change of the state of workflow" in info.value.error_message
    events = await get_store().list_events(handle.workflow_id)
    assert largest_event(events) < KIB


# -- child input -----------------------------------------------------------------------


@pytest.mark.parametrize("cache", CACHE_SIZES)
async def test_oversized_child_input_fails_the_child_start(make_worker, cache) -> None:
    async with make_worker([Parent, Echo], [echo_length], limits=SMALL, max_cached_workflows=cache):
        handle = await Parent.start({"text": BIG})
        assert await handle.result(timeout=10) == {"child_error": "PayloadTooLargeError"}
    store = get_store()
    events = await store.list_events(handle.workflow_id)
    failed = next(e for e in events if e.kind is EventKind.CHILD_FAILED)
    assert_names_the_limit(failed.payload["error"]["message"], "max_input_bytes")
    assert await store.get_workflow(failed.payload["workflow_id"]) is None


# -- error text ------------------------------------------------------------------------


async def test_error_text_is_cut_with_a_marker(make_worker) -> None:
    async with make_worker([Explode], [explode], limits=SMALL):
        handle = await Explode.start({"size": 100 * KIB})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=10)
    message = info.value.error_message
    assert message.startswith("bad url: uuu")
    assert len(message) <= KIB
    assert "more characters cut: error text is limited to 1024 characters" in message
    events = await get_store().list_events(handle.workflow_id)
    assert largest_event(events) < 4 * KIB  # message and traceback, each at most 1 KiB

    roomy = Limits(max_error_chars=200 * KIB)
    async with make_worker([Explode], [explode], limits=roomy):
        handle = await Explode.start({"size": 100 * KIB})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=10)
    assert info.value.error_message == "bad url: " + "u" * 100 * KIB


# A reactor that hands its input to loom.http_request as the request: the guest picks the URL.
HTTP_WAT = """
(module
  (import "loom" "http_request" (func $http (param i32 i32) (result i32)))
  (memory (export "memory") 16)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "alloc") (param $len i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $len)))
    (local.get $ptr))
  (func (export "run") (param $ptr i32) (param $len i32) (result i64)
    (drop (call $http (local.get $ptr) (local.get $len)))
    (i64.const 0)))
"""


async def test_a_guest_chosen_huge_url_stays_out_of_history(
    db_path, make_worker, tmp_path: Path
) -> None:
    """Issue 11: a 20 MiB URL became a 20 MB error in history (here 200 KiB is enough)."""
    manifest = write_activity(tmp_path, name="fetcher", wat=HTTP_WAT)
    async with Registry(db_path) as registry:
        await registry.register(manifest)
    url = "http://evil.example/" + "a" * (200 * KIB)
    async with make_worker([CallWasm], limits=Limits(max_error_chars=4 * KIB)):
        handle = await CallWasm.start({"spec": "fetcher@^1", "payload": {"url": url}})
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=20)
    assert info.value.error_type == "CapabilityDenied"
    assert "more characters" in info.value.error_message
    events = await get_store().list_events(handle.workflow_id)
    failed = next(e for e in events if e.kind is EventKind.ACTIVITY_FAILED)
    assert len(dumps(failed.payload)) < 12 * KIB


def test_the_cli_reports_a_bad_limit_in_one_line(db_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from loom.cli import main

    monkeypatch.setenv("LOOM_MAX_INPUT_BYTES", "8M")
    args = ["start", "LimitsEcho", "--app", __name__, "--db", str(db_path)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "ConfigurationError: LOOM_MAX_INPUT_BYTES='8M' is not a positive whole number; set it "
        "to a size in bytes (e.g. LOOM_MAX_INPUT_BYTES=4194304) or unset it for the default"
    ]


async def test_a_cancel_reason_is_error_text(db_path, make_worker) -> None:
    loom.configure(database=db_path, limits=SMALL)
    async with make_worker([CatchAndGoOn], [echo_length]):
        handle = await CatchAndGoOn.start({"text": "hi"})
        await handle.cancel("because " + "r" * (10 * KIB))
        with pytest.raises(loom.WorkflowCancelledError) as info:
            await handle.result(timeout=10)
    assert "more characters cut" in str(info.value)
    assert largest_event(await get_store().list_events(handle.workflow_id)) < 4 * KIB
