"""The loom-core README's quiz "Complete Example", with its own imports: a durable sleep,
an approval signal (`wait_until_signal`), `state.update`, and cancellation caught as a plain
`Exception` on the client side.

Run it with `python -m examples.loom_core_quiz` (it starts its own in-process worker).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import loom
from loom.core.context import WorkflowContext
from loom.core.workflow import Workflow
from loom.schemas.state import Input, State


class QuizInput(Input):
    student: str
    answers: list[str]


class QuizState(State):
    score: int = 0
    approved_by: str = ""
    status: str = "draft"


ANSWER_KEY = ["b", "a", "d", "c"]


@loom.activity(name="core_grade", description="Grades the answers", retry_count=1)
async def grade(answers: list[str]) -> int:
    return sum(1 for given, right in zip(answers, ANSWER_KEY, strict=False) if given == right)


@loom.workflow(name="CoreQuiz", agent="Robin")
class QuizWorkflow(Workflow[QuizInput, QuizState]):
    @loom.step(description="grading your answers")
    async def grade(self, ctx: WorkflowContext[QuizInput, QuizState]) -> None:
        score = await ctx.activity(grade, ctx.input["answers"])
        await ctx.state.set("score", score)
        ctx.logger.info("graded %s: %d", ctx.input["student"], score)

    @loom.step(description="waiting for the teacher")
    async def review(self, ctx: WorkflowContext[QuizInput, QuizState]) -> None:
        await ctx.sleep(timedelta(hours=48))  # a cooling-off period
        approval = await ctx.wait_until_signal("approve")
        await ctx.state.update(
            lambda s: {**s, "approved_by": approval["teacher"], "status": "final"}
        )


async def main() -> QuizState:
    async with loom.Worker(workflows=[QuizWorkflow], activities=[grade]):
        handle = await QuizWorkflow.start(
            {"student": "bo", "answers": ["b", "a", "d", "x"]}, owner="teacher_1"
        )
        await handle.signal("approve", teacher="Ms. Frizzle")
        result = await handle.result()
        print(f"quiz {handle.id}: {result}")

        abandoned = await QuizWorkflow.start({"student": "cy", "answers": []}, owner="teacher_1")
        await abandoned.cancel("student left the course")
        try:
            await abandoned.result()
        except Exception as err:  # a cancelled workflow's result is an ordinary error here
            print(f"quiz {abandoned.id} {(await abandoned.info())['status']}: {err}")
        return result


if __name__ == "__main__":
    asyncio.run(main())
