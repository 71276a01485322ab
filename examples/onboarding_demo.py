"""The customer-onboarding definition end to end: `python examples/onboarding_demo.py`.

Starts an in-process worker on a SQLite file (default: a fresh temporary one; `--db PATH`),
runs one onboarding that waits for the `email_verified` signal and completes, then one whose
verification email bounces, so the account it created is deleted (the saga) and it fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python examples/onboarding_demo.py`: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom
from examples import customer_onboarding as app
from loom.client import get_store
from loom.history import EventKind

ACTIVITIES = [value for value in vars(app).values() if isinstance(value, loom.Activity)]


async def _steps(workflow_id: str) -> list[str]:
    events = await get_store().list_events(workflow_id)
    return [str(e.payload["key"]) for e in events if e.kind is EventKind.STEP_STARTED]


async def _wait_for_step(workflow_id: str, step: str) -> None:
    for _ in range(1200):  # a minute at most
        if step in await _steps(workflow_id):
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{workflow_id} never reached step {step!r}; is the worker running?")


async def demo(database: Path) -> None:
    loom.configure(database=database)
    user = {"email": "ada@example.com", "name": "Ada", "plan": "pro", "seats": 3}
    async with loom.Worker(
        workflows=[app.onboarding, app.OnboardingAssistant], activities=ACTIVITIES
    ):
        handle = await app.onboarding.start({"userInfo": user})
        await _wait_for_step(handle.workflow_id, "wait-for-verification")
        print(f"{handle.workflow_id}: waiting for email_verified; sending it")
        await handle.signal("email_verified", {"via": "demo"})
        state = await handle.result(timeout=60)
        print(f"completed steps {', '.join(await _steps(handle.workflow_id))}")
        print(f"welcome: {state['welcome']['message']}")
        print("starting one whose verification email bounces")
        bounced = await app.onboarding.start({"userInfo": {**user, "email": "ada@bounce.invalid"}})
        try:
            await bounced.result(timeout=60)
        except loom.ActivityFailedError as err:
            events = await get_store().list_events(bounced.workflow_id)
            undo = [
                e.payload["input"]
                for e in events
                if e.kind is EventKind.ACTIVITY_SCHEDULED
                and e.payload["name"] == "delete-user-account"
            ]
            print(
                f"{bounced.workflow_id}: failed ({err.error_message}); compensated with "
                f"delete-user-account {undo[0]}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    if args.db is not None:
        asyncio.run(demo(args.db))
        return
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(demo(Path(folder) / "onboarding.db"))


if __name__ == "__main__":
    main()
