"""The seed examples complete with correct typed state, locally and durably."""

from __future__ import annotations

import loom
from examples.order import OrderInput, OrderState, OrderWorkflow, charge, send_email
from examples.quiz import QuizWorkflow, grade


async def test_order_execute_locally() -> None:
    state = await OrderWorkflow.compile().execute(OrderInput("o-1", 1250, "ann@example.com"))
    assert state == OrderState(paid=True, receipt="rcpt-o-1-1250", email_sent=True)


async def test_order_durably(db_path, make_worker) -> None:
    async with make_worker([OrderWorkflow], [charge, send_email]):
        handle = await OrderWorkflow.start(OrderInput("o-2", 99, "bob@example.com"))
        state = await handle.result(timeout=10)
    assert isinstance(state, OrderState)
    assert state == OrderState(paid=True, receipt="rcpt-o-2-99", email_sent=True)
    assert await handle.status() is loom.WorkflowStatus.COMPLETED


async def test_quiz_execute_locally_with_signal() -> None:
    state = await QuizWorkflow.compile().execute(
        {"student": "ann", "answers": ["b", "a", "x", "c"]}, signals={"approve": {"teacher": "t1"}}
    )
    assert state == {"score": 3, "approved_by": "t1", "status": "final"}


async def test_quiz_durably_waits_for_approval(db_path, make_worker) -> None:
    async with make_worker([QuizWorkflow], [grade]):
        handle = await QuizWorkflow.start(
            {"student": "bo", "answers": ["b", "a", "d", "c"]}, workflow_id="quiz-bo"
        )
        try:
            await handle.result(timeout=0.5)
        except loom.WorkflowStillRunningError as err:
            assert err.status == "RUNNING"
        else:
            raise AssertionError("the quiz finished without its approval signal")
        assert (await handle.state())["score"] == 4
        await handle.signal("approve", teacher="t9")
        state = await handle.result(timeout=10)
    assert state == {"score": 4, "approved_by": "t9", "status": "final"}
    logs = await loom.get_handle("quiz-bo")._store.list_logs("quiz-bo")
    assert [message for _, _, message in logs] == ["graded bo: 4"]


async def test_logger_is_silent_during_replay(db_path, make_worker) -> None:
    # With no cache every activation replays the history: the log line is still written once.
    async with make_worker([QuizWorkflow], [grade], max_cached_workflows=0):
        handle = await QuizWorkflow.start({"student": "cy", "answers": []}, workflow_id="quiz-cy")
        await handle.signal("approve", teacher="t1")
        await handle.result(timeout=10)
    logs = await loom.get_handle("quiz-cy")._store.list_logs("quiz-cy")
    assert [message for _, _, message in logs] == ["graded cy: 0"]
