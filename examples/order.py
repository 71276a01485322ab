"""Seed example: an order is paid, then a receipt email is sent.

Run a worker for it with `loom worker --app examples.order`.
"""

from __future__ import annotations

from dataclasses import dataclass

import loom


@dataclass
class OrderInput:
    order_id: str
    amount_cents: int
    email: str


@dataclass
class OrderState:
    paid: bool = False
    receipt: str | None = None
    email_sent: bool = False


@loom.activity(name="charge", retry=3, timeout=30)
async def charge(order_id: str, amount_cents: int) -> str:
    """Charge the card; returns a receipt id (deterministic here so tests can check it)."""
    return f"rcpt-{order_id}-{amount_cents}"


@loom.activity(name="send_email", retry_count=5, timeout_seconds=10)
async def send_email(to: str, subject: str) -> bool:
    return "@" in to


@loom.workflow(name="Order", version="1.0.0", description="Pay and confirm", agent="Robin")
class OrderWorkflow(loom.Workflow[OrderInput, OrderState]):
    @loom.step(name="pay", description="charging the card")
    async def pay(self, ctx: loom.WorkflowContext[OrderInput, OrderState]) -> None:
        ctx.state.receipt = await ctx.activity(charge, ctx.input.order_id, ctx.input.amount_cents)
        ctx.state.paid = True

    @loom.step(description="sending the receipt")
    async def confirm(self, ctx: loom.WorkflowContext[OrderInput, OrderState]) -> None:
        subject = f"Receipt {ctx.state.receipt}"
        ctx.state.email_sent = await ctx.activity(send_email, ctx.input.email, subject)
