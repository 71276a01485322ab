"""The mailbox of an actor: ids, message and reply shapes, and the spec that creates one.

Shared by `ctx.send`/`ctx.ask` (workflow code) and `loom.send`/`loom.ask` (clients); it
knows nothing of how messages are stored or handled.
"""

from __future__ import annotations

import hashlib
from typing import Any

from loom._json import JSON, dumps, is_json, loads
from loom.activation import ACTOR_PREFIX, NewWorkflow
from loom.exceptions import ActorHandlerError

ACTOR_VERSION = "actor"
"""The version recorded for an actor created by name only (the CLI): any code serves it."""
REPLY_SIGNAL = "loom.actor.reply:"
"""Prefix of the signal that carries a reply to a workflow that asked."""


def actor_type(actor: Any) -> str:
    """The type name of `actor`: an `@loom.actor` class or its name as a string."""
    if isinstance(actor, str):
        if not actor or ":" in actor:
            raise ValueError(f"actor type must be a non-empty name without ':', got {actor!r}")
        return actor
    compile_ = getattr(actor, "compile", None)
    name = getattr(compile_() if callable(compile_) else None, "name", "")
    if not isinstance(name, str) or not name.startswith(ACTOR_PREFIX):
        raise TypeError(f"expected an @loom.actor class or an actor type name, got {actor!r}")
    return name.removeprefix(ACTOR_PREFIX)


def actor_id(actor: Any, key: str) -> str:
    """The workflow id of the actor (type, key): `actor:Cart:KEY`."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"actor key must be a non-empty string, got {key!r}")
    return f"{ACTOR_PREFIX}{actor_type(actor)}:{key}"


def actor_start(actor: Any, key: str, owner: str | None = None) -> NewWorkflow:
    """How the first message creates the actor. Its seed comes from its id, so every
    sender creates the same actor; a name alone records no code (a worker serves it)."""
    workflow_id = actor_id(actor, key)
    seed = int.from_bytes(hashlib.sha256(workflow_id.encode()).digest()[:8], "big") >> 1
    name = actor_type(actor)
    actor_input: dict[str, JSON] = {"type": name, "key": key, "handled": 0, "snapshots": 0}
    if isinstance(actor, str):
        return NewWorkflow(
            workflow_id, ACTOR_PREFIX + name, ACTOR_VERSION, actor_input, {}, "", 1, seed, owner
        )
    compiled = actor.compile()
    return NewWorkflow(
        workflow_id,
        compiled.name,
        compiled.version,
        actor_input,
        compiled.initial_state(),
        compiled.source_hash,
        len(compiled.steps),
        seed,
        owner,
    )


def message(
    actor: Any, handler: str, payload: JSON, reply: dict[str, JSON] | None = None
) -> dict[str, JSON]:
    """The mailbox signal's payload. A class target checks the handler name here, before
    anything is written; a name-only target learns of a wrong one from the reply."""
    if not isinstance(handler, str) or not handler:
        raise ValueError(f"handler must be a non-empty name, got {handler!r}")
    info = None if isinstance(actor, str) else getattr(actor, "__loom_actor__", None)
    if info is not None and handler not in info.handlers:
        known = ", ".join(sorted(info.handlers)) or "none"
        raise ValueError(
            f"actor {actor_type(actor)} has no handler {handler!r} (handlers: {known})"
        )
    if not is_json(payload):
        raise TypeError(f"message payload must be JSON-serialisable, got {payload!r}")
    body: dict[str, JSON] = {"handler": handler, "payload": loads(dumps(payload))}
    if reply is not None:
        body["reply"] = reply
    return body


def reply_value(body: dict[str, JSON]) -> JSON:
    """The handler's return value from a reply, or its error raised as ActorHandlerError."""
    error = body.get("error")
    if isinstance(error, dict):
        type_, _, key = str(body.get("actor", "")).removeprefix(ACTOR_PREFIX).partition(":")
        raise ActorHandlerError(
            actor_type=type_,
            key=key,
            handler=str(body.get("handler")),
            error_type=str(error.get("type")),
            error_message=str(error.get("message")),
        )
    return body.get("result")
