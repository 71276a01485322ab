"""Declarative workflows: the seed's customer-onboarding definition on a real worker, the
schema the package ships, validation messages, templates, conditions, waits, replay."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import loom
import loom.wdl
from examples import customer_onboarding as app
from loom.cli import main
from loom.client import get_store
from loom.history import EventKind
from loom.replay import WorkflowRun
from loom.wdl import ExpressionError, InvalidDefinitionError

EXAMPLE = Path(app.__file__).with_name("customer_onboarding.json")
ACTIVITIES = [
    app.create_user_account,
    app.delete_user_account,
    app.send_email,
    app.create_workspace,
    app.delete_workspace,
    app.setup_billing,
    app.assign_account_manager,
    app.draft_welcome,
]
WORKFLOWS = [app.onboarding, app.OnboardingAssistant]


def _user(plan: str = "pro", email: str = "ada@example.com") -> dict[str, Any]:
    return {"userInfo": {"email": email, "name": "Ada", "plan": plan, "seats": 3}}


async def _wait_for_event(workflow_id: str, kind: EventKind, key: str) -> None:
    store = get_store()
    for _ in range(1500):
        events = await store.list_events(workflow_id)
        if any(e.kind is kind and e.payload.get("key") == key for e in events):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{workflow_id} never reached {kind} {key}")


def _scheduled(events: list[Any]) -> list[tuple[str, Any]]:
    return [
        (e.payload["name"], e.payload["input"])
        for e in events
        if e.kind is EventKind.ACTIVITY_SCHEDULED
    ]


# -- the seed's example on a real worker ------------------------------------------------


@pytest.mark.parametrize("cache", [10_000, 0], ids=["cached", "replay-always"])
async def test_onboarding_waits_for_verification_runs_branches_completes(
    db_path, make_worker, cache
) -> None:
    async with make_worker(WORKFLOWS, ACTIVITIES, max_cached_workflows=cache):
        handle = await app.onboarding.start(_user("pro"), workflow_id=f"onboard-{cache}")
        await _wait_for_event(handle.workflow_id, EventKind.SIGNAL_WAIT_STARTED, "email_verified")
        assert await handle.status() is loom.WorkflowStatus.RUNNING
        await handle.signal("email_verified", {"verified_at": "2026-12-02T18:00:00Z"})
        state = await handle.result(timeout=60)
    user_id = state["account"]["user_id"]
    assert state["verification"] == {"verified_at": "2026-12-02T18:00:00Z"}
    assert state["workspace"]["seats"] == 3  # a whole-string template kept the int
    assert state["billing"]["monthly_total"] == 29.5
    assert state["welcome"]["message"].startswith("Welcome aboard, Ada! Your pro workspace")
    assert "welcome_email" in state and "account_manager" not in state  # the else arm
    events = await get_store().list_events(handle.workflow_id)
    steps = [e.payload["key"] for e in events if e.kind is EventKind.STEP_STARTED]
    assert steps == [
        "create-user-account",
        "send-verification-email",
        "wait-for-verification",
        "provision",
        "personalize-welcome",
        "route-by-plan",
    ]
    calls = dict(_scheduled(events)[:2])
    assert calls["send-email"]["subject"] == "Welcome Ada, please verify your email"
    assert calls["send-email"]["variables"] == {
        "user_id": user_id,
        "api_key": "{{secret:MAIL_API_KEY}}",  # left for the sandbox, untouched
    }
    names = [name for name, _ in _scheduled(events)]
    # Both branches were scheduled before either completed: they ran in parallel.
    kinds = [(e.kind, e.payload.get("name")) for e in events]
    workspace = kinds.index((EventKind.ACTIVITY_SCHEDULED, "create-workspace"))
    billing = kinds.index((EventKind.ACTIVITY_SCHEDULED, "setup-billing"))
    first_done = min(
        kinds.index((EventKind.ACTIVITY_COMPLETED, "create-workspace")),
        kinds.index((EventKind.ACTIVITY_COMPLETED, "setup-billing")),
    )
    assert max(workspace, billing) < first_done
    assert "delete-user-account" not in names
    child = await loom.get_handle(f"{handle.workflow_id}/personalize-welcome").status()
    assert child is loom.WorkflowStatus.COMPLETED


async def test_onboarding_condition_takes_the_then_arm(db_path, make_worker) -> None:
    async with make_worker(WORKFLOWS, ACTIVITIES):
        handle = await app.onboarding.start(_user("enterprise"))
        await handle.signal("email_verified")  # buffered until the wait step
        state = await handle.result(timeout=60)
    assert state["account_manager"]["manager"] == "Dana"
    assert state["account_manager"]["note"].startswith("Welcome aboard, Ada!")
    assert "welcome_email" not in state


async def test_failure_after_account_creation_deletes_that_account(db_path, make_worker) -> None:
    async with make_worker(WORKFLOWS, ACTIVITIES):
        handle = await app.onboarding.start(_user(email="ada@bounce.invalid"))
        with pytest.raises(loom.ActivityFailedError) as info:
            await handle.result(timeout=60)
    assert info.value.activity_name == "send-email"  # the original error, after the undo
    events = await get_store().list_events(handle.workflow_id)
    account = next(
        e.payload["result"]
        for e in events
        if e.kind is EventKind.ACTIVITY_COMPLETED and e.payload["name"] == "create-user-account"
    )
    assert _scheduled(events)[-1] == ("delete-user-account", {"user_id": account["user_id"]})
    done = [e.payload["name"] for e in events if e.kind is EventKind.ACTIVITY_COMPLETED]
    assert done == ["create-user-account", "delete-user-account"]
    assert await handle.status() is loom.WorkflowStatus.FAILED


async def test_definition_history_replays_without_new_commands(db_path, make_worker) -> None:
    async with make_worker(WORKFLOWS, ACTIVITIES):
        handle = await app.onboarding.start(_user("pro"))
        await handle.signal("email_verified")
        await handle.result(timeout=60)
    events = await get_store().list_events(handle.workflow_id)
    run = WorkflowRun(app.onboarding, handle.workflow_id, replay_until=events[-1].sequence)
    run.apply(events[:-1])
    assert run.failure is None
    activation = run.take_activation()
    assert [e.kind for e in activation.events] == [EventKind.WORKFLOW_COMPLETED]
    assert activation.state == events[-1].payload["state"]


async def test_input_schema_is_enforced_at_start(db_path) -> None:
    with pytest.raises(TypeError, match="plan"):
        await app.onboarding.start({"userInfo": {"email": "a@b", "name": "A", "plan": "gold"}})


# -- the schema and validation ----------------------------------------------------------


def test_shipped_json_schema_is_current() -> None:
    shipped = loom.wdl.SCHEMA_PATH
    current = json.dumps(loom.wdl.json_schema(), indent=2, sort_keys=True) + "\n"
    if not shipped.exists() or shipped.read_text() != current:
        shipped.write_text(current)
        pytest.fail(f"{shipped} was stale and has been regenerated; commit it")


def test_example_validates_against_the_shipped_schema() -> None:
    from jsonschema import Draft202012Validator

    schema = json.loads(loom.wdl.SCHEMA_PATH.read_text())
    Draft202012Validator(schema).validate(json.loads(EXAMPLE.read_text()))


def _problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidDefinitionError) as info:
        loom.wdl.load(document)
    return info.value.problems


def _doc(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "version": "1.0.0", "steps": list(steps)}


def test_validation_errors_name_the_step_and_field() -> None:
    nested = {
        "id": "outer",
        "type": "parallel",
        "branches": [[{"id": "inner", "type": "activity", "activity": "a", "retry": 0}]],
    }
    assert _problems(_doc(nested)) == [
        "step 'inner' field 'retry.max_attempts': Input should be greater than or equal to 1"
    ]
    [problem] = _problems(_doc({"id": "w", "type": "wait", "event": "e", "timeout": -5}))
    assert problem.startswith("step 'w' field 'timeout': Input should be greater than 0")
    [problem] = _problems(_doc({"id": "x", "type": "teleport"}))
    assert problem.startswith("step 'x' field 'type': Input tag 'teleport'")
    [problem] = _problems(_doc({"id": "a", "type": "activity"}))
    assert problem == "step 'a' field 'activity': Field required"
    [problem] = _problems(_doc({"id": "a", "type": "activity", "activity": "x", "colour": 1}))
    assert problem == "step 'a' field 'colour': Extra inputs are not permitted"
    [problem] = _problems(_doc({"id": "c", "type": "agent", "agent": "x", "input": {}, "then": 1}))
    assert problem.startswith("step 'c' field 'then'")


def test_rule_errors_name_the_step_and_field() -> None:
    problems = _problems(
        _doc(
            {"id": "a", "type": "activity", "activity": "x", "output": "input"},
            {"id": "a", "type": "activity", "activity": "bad name@^1"},
            {"id": "c", "type": "condition", "if": "1 +", "then": []},
            {"id": "t", "type": "activity", "activity": "x", "input": {"k": ["{{ a. }}"]}},
            {"id": "k", "type": "workflow"},
        )
    )
    assert problems[0] == "step 'a' field 'output': 'input' is reserved (the workflow input)"
    assert problems[1] == "step 'a' field 'id': step ids must be unique, 'a' repeats"
    assert problems[2].startswith("step 'a' field 'activity': invalid activity spec")
    assert problems[3].startswith("step 'c' field 'if': expression '1 +' does not parse")
    assert problems[4].startswith("step 't' field 'input'.k[0]: expression 'a.' does not parse")
    assert problems[5] == "step 'k' field 'workflow': give exactly one of 'workflow' or 'agent'"


# -- templates, conditions, waits, sleeps (in-process, time simulated) -----------------


def test_templates_keep_json_types_and_interpolate() -> None:
    from loom._expression import render

    variables = {"order": {"total": 120.5, "items": [1, 2], "id": 7, "ok": True, "none": None}}
    assert render("{{ order.total }}", variables) == 120.5
    assert render("{{order.items}}", variables) == [1, 2]  # the key, never dict.items
    assert render(" {{ order.ok }} ", variables) is True
    assert render("{{ order.none }}", variables) is None
    assert (
        render("#{{ order.id }}: {{ order.items }} {{ order.ok }}", variables) == "#7: [1,2] true"
    )
    assert render({"a": ["{{ order.total > 100.0 }}"]}, variables) == {"a": [True]}
    assert render("{{secret:API_KEY}} and {{ order.id }}", variables) == "{{secret:API_KEY}} and 7"


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('touch {marker}')",
        "order.__class__",
        "order.items.__globals__",
        "now()",
        'exec(\'open("{marker}", "w")\')',
        "timestamp('2026-01-01T00:00:00Z')",
    ],
)
def test_escape_attempts_are_errors_never_executed(expression: str, tmp_path: Path) -> None:
    from loom._expression import evaluate

    marker = tmp_path / "escaped"
    with pytest.raises(ExpressionError):
        evaluate(expression.format(marker=marker), {"order": {"items": [1]}})
    assert not marker.exists()


def _flow(*steps: dict[str, Any], name: str = "flow") -> loom.CompiledWorkflow[Any, Any]:
    return loom.wdl.load({"name": name, "steps": list(steps)})


@pytest.mark.parametrize(("amount", "arm"), [(120.5, "big"), (99.5, "small")])
async def test_condition_both_ways(amount: float, arm: str) -> None:
    flow = _flow(
        {
            "id": "route",
            "type": "condition",
            "if": "order.total > 100",
            "then": [{"id": "big", "type": "wait", "event": "big", "output": "big"}],
            "else": [{"id": "small", "type": "wait", "event": "small", "output": "small"}],
        },
        name="route-order",
    )
    state = await flow.execute({"order": {"total": amount}}, signals={arm: {"arm": arm}})
    assert state == {arm: {"arm": arm}}


async def test_wait_timeout_fails_or_continues() -> None:
    wait = {"id": "verify", "type": "wait", "event": "never", "timeout": 50, "output": "got"}
    failing = _flow(wait, name="wait-fail")
    with pytest.raises(loom.WorkflowExecutionError) as info:
        await failing.execute({})
    assert info.value.error_type == "StepTimeoutError"
    assert "step 'verify' timed out after 50 ms" in info.value.error_message
    lenient = _flow(
        {**wait, "on_timeout": "continue"},
        {"id": "nap", "type": "sleep", "duration": "{{ 10 * 2 }}"},
        name="wait-go",
    )
    assert await lenient.execute({}) == {"got": None}


async def test_wait_timeout_is_a_durable_timer(db_path, make_worker) -> None:
    flow = _flow({"id": "verify", "type": "wait", "event": "never", "timeout": 100}, name="wait-db")
    async with make_worker([flow]):
        handle = await flow.start({})
        with pytest.raises(loom.WorkflowExecutionError) as info:
            await handle.result(timeout=30)
    assert info.value.error_type == "StepTimeoutError"
    events = await get_store().list_events(handle.workflow_id)
    assert [e.kind for e in events if e.kind is EventKind.TIMER_FIRED] == [EventKind.TIMER_FIRED]


async def test_expression_failure_at_run_time_names_the_step() -> None:
    flow = _flow({"id": "nap", "type": "sleep", "duration": "{{ missing.field }}"}, name="bad-nap")
    with pytest.raises(loom.WorkflowExecutionError) as info:
        await flow.execute({})
    assert info.value.error_type == "ExpressionError"
    assert "step 'nap' field 'duration'" in info.value.error_message


async def test_step_timeout_races_the_activity_durably(db_path, make_worker) -> None:
    release = asyncio.Event()

    @loom.activity(name="wdl-slow", timeout=60)
    async def slow() -> str:
        await release.wait()
        return "late"

    flow = _flow(
        {"id": "slow", "type": "activity", "activity": "wdl-slow", "timeout": 200},
        name="slow-flow",
    )
    async with make_worker([flow], [slow]):
        handle = await flow.start({})
        with pytest.raises(loom.WorkflowExecutionError) as info:
            await handle.result(timeout=30)
        release.set()
    assert info.value.error_type == "StepTimeoutError"
    assert "step 'slow' timed out after 200 ms" in info.value.error_message


async def test_definition_runs_another_definition_as_child() -> None:
    _flow({"id": "w", "type": "wait", "event": "go", "output": "payload"}, name="inner-flow")
    outer = _flow(
        {"id": "call", "type": "workflow", "workflow": "inner-flow", "output": "inner"},
        name="outer-flow",
    )
    assert await outer.execute({}, signals={"go": 5}) == {"inner": {"payload": 5}}


# -- the graph and the CLI ------------------------------------------------------------


def test_mermaid_graph_of_the_example() -> None:
    text = loom.wdl.mermaid(app.onboarding)
    assert text.startswith("flowchart TD\n")
    assert 'n2["create-user-account: running create-user-account"]' in text
    assert "n2 -.->|on failure| n3" in text and 'n3["undo: delete-user-account"]' in text
    assert "n6 --> n7" in text and "n6 --> n9" in text  # the two branches leave the fork
    assert "-->|true|" in text and "-->|false|" in text


def test_cli_validate_and_graph(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["wdl", "validate", str(EXAMPLE)])
    assert ok.exit_code == 0, ok.output
    assert "valid — customer-onboarding 1.0.0, 6 step(s)" in ok.output
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(_doc({"id": "s", "type": "sleep"})))
    bad = runner.invoke(main, ["wdl", "validate", str(broken)])
    assert bad.exit_code == 1
    assert "step 's' field 'duration': Field required" in bad.output
    not_json = tmp_path / "nope.json"
    not_json.write_text("{\n  'name': 1}")
    assert (
        "not JSON (line 2 column 3)"
        in runner.invoke(main, ["wdl", "validate", str(not_json)]).output
    )
    graph = runner.invoke(main, ["wdl", "graph", str(EXAMPLE)])
    assert graph.exit_code == 0 and graph.output == loom.wdl.mermaid(app.onboarding)
    schema = runner.invoke(main, ["wdl", "schema"])
    assert json.loads(schema.output) == loom.wdl.json_schema()


async def test_cancel_while_waiting_undoes_the_account(db_path, make_worker) -> None:
    async with make_worker(WORKFLOWS, ACTIVITIES):
        handle = await app.onboarding.start(_user())
        await _wait_for_event(handle.workflow_id, EventKind.SIGNAL_WAIT_STARTED, "email_verified")
        await handle.cancel("customer left")
        with pytest.raises(loom.WorkflowCancelledError):
            await handle.result(timeout=60)
    events = await get_store().list_events(handle.workflow_id)
    done = [e.payload["name"] for e in events if e.kind is EventKind.ACTIVITY_COMPLETED]
    assert done == ["create-user-account", "send-email", "delete-user-account"]
    assert await handle.status() is loom.WorkflowStatus.CANCELED


def test_retry_shorthand_is_in_the_schema_and_accepted() -> None:
    from jsonschema import Draft202012Validator

    document = _doc({"id": "a", "type": "activity", "activity": "x", "retry": 4})
    Draft202012Validator(json.loads(loom.wdl.SCHEMA_PATH.read_text())).validate(document)
    document["$schema"] = "./wdl_schema.json"  # editors find the schema; Loom ignores it
    [step] = loom.wdl.validate(document).steps
    assert isinstance(step, loom.wdl.ActivityStep) and step.retry is not None
    assert step.retry.max_attempts == 4


@loom.activity(name="wdl-shout")
async def shout(text: str) -> str:
    return text.upper()


async def test_native_activity_takes_an_object_as_kwargs_and_else_one_argument() -> None:
    flow = _flow(
        {
            "id": "one",
            "type": "activity",
            "activity": "wdl-shout",
            "input": "{{ word }}",
            "output": "a",
        },
        {
            "id": "kw",
            "type": "activity",
            "activity": "wdl-shout",
            "input": {"text": "b {{ a }}"},
            "output": "b",
        },
        name="shouting",
    )
    assert await flow.execute({"word": "hi"}) == {"a": "HI", "b": "B HI"}


# -- definitions stored in the database (both stores) ----------------------------------------


def _stored(version: str, key: str) -> dict[str, Any]:
    return {
        "name": "stored-flow",
        "version": version,
        "steps": [{"id": "hold", "type": "wait", "event": "go", "output": key}],
    }


async def test_registered_versions_are_immutable_and_pinned(store, worker) -> None:
    from loom.exceptions import DefinitionConflictError

    first, created = await loom.wdl.register(store, _stored("1.0.0", "a"))
    assert created
    assert (await loom.wdl.register(store, _stored("1.0.0", "a")))[1] is False
    with pytest.raises(DefinitionConflictError, match="immutable"):
        await loom.wdl.register(store, _stored("1.0.0", "changed"))
    with pytest.raises(loom.wdl.InvalidDefinitionError):
        await loom.wdl.register(store, {"name": "stored-flow", "steps": [{"id": "x"}]})
    assert [r.version for r in await store.list_definitions("stored-flow")] == ["1.0.0"]

    running = await (await loom.wdl.resolve(store, "stored-flow@^1")).start({}, workflow_id="s-1")
    await loom.wdl.register(store, _stored("1.2.0", "b"))
    latest = await loom.wdl.resolve(store, "stored-flow")
    assert latest.version == "1.2.0"
    newer = await latest.start({}, workflow_id="s-2")
    record = await store.get_definition("stored-flow", sha256_prefix=first.source_hash)
    assert (
        record is not None
        and record.version == "1.0.0"
        and record.document == _stored("1.0.0", "a")
    )
    async with worker([]):  # no Python workflows: both run from the database
        await running.signal("go", 1)
        await newer.signal("go", 2)
        assert await running.result(timeout=60) == {"a": 1}  # the version it started with
        assert await newer.result(timeout=60) == {"b": 2}
    with pytest.raises(loom.WorkflowDefinitionError, match="satisfies '>=2'"):
        await loom.wdl.resolve(store, "stored-flow@>=2")
