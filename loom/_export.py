"""Exported histories: one workflow's events as a JSON file that replays without a database.

`loom history export` writes it, `loom replay FILE` and `loom.testing.replay` read it, and the
golden histories under tests/ use it. Knows the event and record shapes, not the stores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from loom._json import JSON
from loom.exceptions import LoomError
from loom.history import Event, EventKind, WorkflowStatus
from loom.store import Store, WorkflowRecord

FORMAT = "loom-history"
FORMAT_VERSION = 1
"""Bumped only for a change old readers would misread; readers refuse newer versions."""


class HistoryFileError(LoomError):
    """A file given as an exported history is not one (or is from a newer Loom)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"{path} is not a Loom history export: {problem}; "
            f"write one with `loom history export ID --output {path}`"
        )


@dataclass(frozen=True, slots=True)
class ExportedHistory:
    """What replay needs of an export: who the workflow was and its events, in order."""

    workflow_id: str
    workflow_name: str
    workflow_version: str
    status: WorkflowStatus
    events: list[Event]

    def record(self) -> WorkflowRecord:
        """A stand-in for the workflow row, for code that replays stored records.

        Only the identity, status and history length are real: nothing replay reads."""
        last = self.events[-1].sequence if self.events else 0
        at = self.events[0].created_at if self.events else 0
        return WorkflowRecord(
            workflow_id=self.workflow_id,
            workflow_name=self.workflow_name,
            workflow_version=self.workflow_version,
            status=self.status,
            input=None,
            state={},
            error=None,
            owner=None,
            agent=None,
            parent_id=None,
            current_step=None,
            step_description=None,
            step_index=0,
            total_steps=0,
            last_sequence=last,
            processed_sequence=last,
            epoch=0,
            created_at=at,
            updated_at=at,
        )


def export_json(record: WorkflowRecord, events: list[Event]) -> dict[str, JSON]:
    """The export of one workflow: its whole row (for people) and every event (for replay)."""
    workflow: dict[str, JSON] = {f.name: getattr(record, f.name) for f in fields(WorkflowRecord)}
    workflow["status"] = record.status.value
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "workflow": workflow,
        "events": [
            {
                "sequence": e.sequence,
                "kind": e.kind.value,
                "payload": e.payload,
                "created_at": e.created_at,
            }
            for e in events
        ],
    }


async def export_history(store: Store, record: WorkflowRecord) -> dict[str, JSON]:
    return export_json(record, await store.list_events(record.workflow_id))


def is_history_file(argument: str) -> bool:
    """Whether a command-line argument names an export rather than a workflow id."""
    return argument.endswith(".json") and Path(argument).is_file()


def read_history(path: str | Path) -> ExportedHistory:
    """Parse an export; every problem is a HistoryFileError naming the file."""
    where = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HistoryFileError(where, f"cannot be read as JSON ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HistoryFileError(where, f'it has no "format": "{FORMAT}" key')
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise HistoryFileError(
            where, f"format_version {version!r} is newer than this Loom reads ({FORMAT_VERSION})"
        )
    try:
        workflow = data["workflow"]
        events = [
            Event(
                int(e["sequence"]), EventKind(e["kind"]), dict(e["payload"]), int(e["created_at"])
            )
            for e in data["events"]
        ]
        return ExportedHistory(
            workflow_id=str(workflow["workflow_id"]),
            workflow_name=str(workflow["workflow_name"]),
            workflow_version=str(workflow.get("workflow_version", "")),
            status=WorkflowStatus(workflow["status"]),
            events=events,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise HistoryFileError(where, f"a field is missing or malformed ({err!r})") from err
