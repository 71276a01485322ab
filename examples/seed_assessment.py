"""Seed 000, the assessment example, in the spellings that seed uses (see README "Coming from
loom-core"): a dict `State`, one-parameter `WorkflowContext[State]`, `retry_count=`,
`ctx.sleep(delta=)`, `ctx.wait_until_signal`, `state.update` that replaces the state, and a
progress stream that yields a list of workflows.

Run it with `python -m examples.seed_assessment` (it starts its own in-process worker).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import loom


class AssessmentInput(loom.Input):
    student: str
    answers: dict[str, str]


class AssessmentState(loom.State):
    score: int = 0
    feedback: str = ""
    reviewed_by: str = ""
    stage: str = "new"


ANSWER_KEY = {"q1": "b", "q2": "a", "q3": "d"}


@loom.activity(description="Scores the answers against the key", retry_count=0)
async def score_answers(answers: dict[str, str]) -> int:
    return sum(1 for q, right in ANSWER_KEY.items() if answers.get(q) == right)


@loom.activity(description="Writes feedback for the student", retry_count=2, timeout_seconds=10)
async def write_feedback(student: str, score: int) -> str:
    return f"{student}: {score}/{len(ANSWER_KEY)}" + (" - well done" if score == 3 else "")


@loom.workflow(name="Assessment", description="Score, give feedback, review", agent="Robin")
class AssessmentWorkflow(loom.Workflow[AssessmentInput, AssessmentState]):
    @loom.step(description="scoring your answers")
    async def score(self, ctx: loom.WorkflowContext[AssessmentState]) -> None:
        ctx.state["score"] = await ctx.activity(score_answers, ctx.input["answers"])
        ctx.state["stage"] = "scored"

    @loom.step(description="writing your feedback")
    async def feedback(self, ctx: loom.WorkflowContext[AssessmentState]) -> None:
        text = await ctx.activity(write_feedback, ctx.input["student"], ctx.state["score"])
        await ctx.state.set("feedback", text)
        await ctx.sleep(delta=timedelta(hours=1))  # give the student time to read it

    @loom.step(description="waiting for a reviewer")
    async def review(self, ctx: loom.WorkflowContext[AssessmentState]) -> None:
        review = await ctx.wait_until_signal("review")
        await ctx.state.update(
            lambda s: {
                "score": s["score"],
                "feedback": s["feedback"],
                "reviewed_by": review["reviewer"],
                "stage": "final",
            }
        )
        ctx.logger.info("assessment %s reviewed by %s", ctx.id, review["reviewer"])


async def main() -> AssessmentState:
    async with loom.Worker(
        workflows=[AssessmentWorkflow], activities=[score_answers, write_feedback]
    ):
        handle = await AssessmentWorkflow.start(
            {"student": "ann", "answers": {"q1": "b", "q2": "a", "q3": "d"}}, owner="teacher_1"
        )
        async for update in loom.stream_progress("teacher_1"):
            for wf in update:
                print(f"{wf['agent']}: {wf['message']} ({wf['current_step']}/{wf['total_steps']})")
            if any(wf["current_step"] == 3 for wf in update):
                break
        await handle.signal("review", {"reviewer": "Dr. Lee"})
        result = await handle.result()
        info = await handle.info()
        print(info["status"], result)
        return result


if __name__ == "__main__":
    asyncio.run(main())
