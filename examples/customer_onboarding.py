"""Seed 004's "customer-onboarding" definition (`customer_onboarding.json`) and the activities
and agent it calls.

Run it: `loom worker --app examples.customer_onboarding`, then
`loom start customer-onboarding --app examples.customer_onboarding --input '{"userInfo": {...}}'`
and `loom signal <id> email_verified`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import loom
import loom.wdl

PRICES = {"free": 0.0, "pro": 29.5, "enterprise": 120.5}


class EmailBouncedError(Exception):
    """The address does not take mail: retrying will not help."""


def _id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


@loom.activity(name="create-user-account", retry=3, timeout=10)
async def create_user_account(email: str, name: str) -> dict[str, str]:
    """Create the account; the id derives from the email so reruns are idempotent."""
    return {"user_id": _id("usr", email), "email": email, "name": name}


@loom.activity(name="delete-user-account", retry=5, timeout=10)
async def delete_user_account(user_id: str) -> dict[str, str]:
    return {"deleted": user_id}


@loom.activity(name="send-email", retry=3, timeout=10, non_retryable=(EmailBouncedError,))
async def send_email(
    to: str, subject: str, template: str, variables: dict[str, str] | None = None
) -> dict[str, str]:
    if to.endswith("@bounce.invalid"):
        raise EmailBouncedError(f"{to} bounced")
    return {"message_id": _id("msg", f"{to}/{template}"), "subject": subject}


@loom.activity(name="create-workspace", retry=3, timeout=10)
async def create_workspace(user_id: str, seats: int) -> dict[str, object]:
    workspace_id = _id("ws", user_id)
    return {
        "workspace_id": workspace_id,
        "url": f"https://app.example/{workspace_id}",
        "seats": seats,
    }


@loom.activity(name="delete-workspace", retry=5, timeout=10)
async def delete_workspace(workspace_id: str) -> dict[str, str]:
    return {"deleted": workspace_id}


@loom.activity(name="setup-billing", retry=3, timeout=10)
async def setup_billing(user_id: str, plan: str) -> dict[str, object]:
    return {"customer_id": _id("cus", user_id), "plan": plan, "monthly_total": PRICES[plan]}


@loom.activity(name="assign-account-manager", retry=3, timeout=10)
async def assign_account_manager(user_id: str, note: str) -> dict[str, str]:
    return {"manager": "Dana", "user_id": user_id, "note": note}


@loom.activity(name="draft-welcome", retry=3, timeout=10)
async def draft_welcome(name: str, plan: str, workspace_url: str) -> str:
    return f"Welcome aboard, {name}! Your {plan} workspace is ready at {workspace_url}"


@loom.workflow(name="onboarding-assistant", agent="Ava", description="Drafts a personal welcome")
class OnboardingAssistant(loom.Workflow[dict, dict]):  # type: ignore[type-arg]
    """The agent the definition's `agent` step starts as a child workflow."""

    @loom.step(description="drafting the welcome")
    async def draft(self, ctx):  # type: ignore[no-untyped-def]
        ctx.state.message = await ctx.activity(
            draft_welcome, ctx.input["name"], ctx.input["plan"], ctx.input["workspace_url"]
        )


onboarding = loom.wdl.load(Path(__file__).with_name("customer_onboarding.json"))
"""The definition as a CompiledWorkflow: `await onboarding.start({...})`."""
