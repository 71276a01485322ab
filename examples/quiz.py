"""Seed example: a quiz is graded, waits a cooling-off period, then needs a teacher's approval.

Uses the dict style of state, a durable timer and a signal.
"""

from __future__ import annotations

from typing import TypedDict

import loom


class QuizInput(TypedDict):
    student: str
    answers: list[str]


class QuizState(TypedDict, total=False):
    score: int
    approved_by: str
    status: str


ANSWER_KEY = ["b", "a", "d", "c"]


@loom.activity(retry=2, timeout=5)
async def grade(answers: list[str]) -> int:
    return sum(1 for given, right in zip(answers, ANSWER_KEY, strict=False) if given == right)


@loom.workflow(name="Quiz", agent="Robin")
class QuizWorkflow(loom.Workflow[QuizInput, QuizState]):
    @loom.step(description="grading your answers")
    async def grade(self, ctx: loom.WorkflowContext[QuizInput, QuizState]) -> None:
        score = await ctx.activity(grade, ctx.input["answers"])
        await ctx.state.set("score", score)
        ctx.logger.info("graded %s: %d", ctx.input["student"], score)

    @loom.step(description="waiting for the teacher")
    async def review(self, ctx: loom.WorkflowContext[QuizInput, QuizState]) -> None:
        await ctx.sleep(0.2)  # a cooling-off period (hours in real life)
        approval = await ctx.wait_for_signal("approve")
        async with ctx.state.batch():
            ctx.state["approved_by"] = approval["teacher"]
            ctx.state["status"] = "final"
