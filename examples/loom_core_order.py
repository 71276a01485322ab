"""The loom-core README's order "Complete Example", with its own imports: `loom.core.*` and
`loom.schemas.state` paths, dict `Input`/`State`, `retry_count=`, `handle.info()`.

Run it with `python -m examples.loom_core_order` (it starts its own in-process worker).
"""

from __future__ import annotations

import asyncio

import loom
from loom.core.context import WorkflowContext
from loom.core.workflow import Workflow
from loom.schemas.state import Input, State


class OrderInput(Input):
    order_id: str
    amount_cents: int
    email: str


class OrderState(State):
    paid: bool = False
    receipt: str = ""
    email_sent: bool = False


@loom.activity(name="core_charge", description="Charges the card", retry_count=3, timeout=30)
async def charge(order_id: str, amount_cents: int) -> str:
    return f"rcpt-{order_id}-{amount_cents}"


@loom.activity(name="core_send_email", description="Sends the receipt", retry_count=0)
async def send_email(to: str, subject: str) -> bool:
    return "@" in to


@loom.workflow(name="CoreOrder", version="1.0.0", description="Pay and confirm", agent="Robin")
class OrderWorkflow(Workflow[OrderInput, OrderState]):
    @loom.step(name="pay", description="charging the card")
    async def pay(self, ctx: WorkflowContext[OrderInput, OrderState]) -> None:
        receipt = await ctx.activity(charge, ctx.input["order_id"], ctx.input["amount_cents"])
        await ctx.state.set("receipt", receipt)
        await ctx.state.set("paid", True)

    @loom.step(description="sending the receipt")
    async def confirm(self, ctx: WorkflowContext[OrderInput, OrderState]) -> None:
        sent = await ctx.activity(send_email, ctx.input["email"], f"Receipt {ctx.state['receipt']}")
        await ctx.state.set("email_sent", sent)


async def main() -> OrderState:
    async with loom.Worker(workflows=[OrderWorkflow], activities=[charge, send_email]):
        handle = await OrderWorkflow.start(
            {"order_id": "o-1", "amount_cents": 1250, "email": "ann@example.com"},
            owner="user_1",
        )
        result = await handle.result()
        info = await handle.info()
        print(f"order {info['workflow_id']} {info['status']}: {result}")
        return result


if __name__ == "__main__":
    asyncio.run(main())
