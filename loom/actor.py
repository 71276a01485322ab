"""Durable actors: `@loom.actor` classes whose keyed instances handle messages one at a time.

An actor is a long-lived workflow (`actor:Cart:KEY`) whose mailbox is its signal queue, so
messages are durable, ordered and handled exactly once, and the workflow task's lease makes
one activation cluster-wide. Every `snapshot_every` messages it continues as new with its
state as the snapshot, so its history (and replay) stays bounded.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, overload

from loom import mailbox
from loom._json import JSON, is_json
from loom.activation import ACTOR_PREFIX, MAILBOX
from loom.client import client_limits, get_store
from loom.context import WorkflowContext
from loom.exceptions import WorkflowDefinitionError
from loom.history import encode_error
from loom.store import Store, reply_key
from loom.workflow import Workflow, WorkflowInfo, step

__all__ = ["Actor", "ActorInfo", "actor", "ask", "handler", "send"]

StateT = TypeVar("StateT")
A = TypeVar("A", bound="type[Actor[Any]]")
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])

DEFAULT_SNAPSHOT_EVERY = 1_000
_HANDLER_ATTR = "__loom_handler__"
_REPLY_POLL = (0.005, 0.1)
"""First and longest pause between looks for a reply written by another process (a worker
in this process wakes the asker at once)."""


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """An actor type: its name, handlers by name and compaction interval."""

    name: str
    handlers: Mapping[str, Callable[..., Awaitable[Any]]]
    snapshot_every: int


class Actor(Workflow[dict[str, Any], StateT], Generic[StateT]):
    """Base class of actors: subclass as `Actor[State]`, decorate with `@loom.actor` and
    add `@loom.handler` methods `async def add(self, ctx, payload) -> JSON`.

    `ctx.state` is the actor's State, kept across messages; `ctx` is a workflow context
    (activities, sleep, children, `ctx.send`/`ctx.ask` to other actors). The instance
    (`self`) is rebuilt on every replay: keep what must last in `ctx.state`.
    """

    __loom_actor__: ClassVar[ActorInfo | None] = None

    @step(name="mailbox", description="handling messages")
    async def _mailbox(self, ctx: WorkflowContext[dict[str, Any], StateT]) -> None:
        info = type(self).__loom_actor__
        assert info is not None  # only @loom.actor classes are served
        origin: dict[str, JSON] = dict(ctx.input)
        handled = int(origin.get("handled", 0))
        in_epoch = 0
        while True:
            message = await ctx.wait_for_signal(MAILBOX)
            body = await _handle(self, info, ctx, message)
            ctx._answer(message, body)
            handled += 1
            in_epoch += 1
            # Postponed while a handler left a command running (an un-awaited child):
            # its result belongs to this epoch's history.
            if in_epoch >= info.snapshot_every and ctx._is_quiet:
                snapshots = int(origin.get("snapshots", 0)) + 1
                ctx._continue_as_new({**origin, "handled": handled, "snapshots": snapshots})
                return


async def _handle(
    actor: Actor[Any], info: ActorInfo, ctx: WorkflowContext[Any, Any], message: JSON
) -> dict[str, JSON]:
    """Run one message's handler; its outcome as a reply body (an error does not stop
    the actor: it goes to the asker, or nowhere for a send)."""
    name = str(message.get("handler")) if isinstance(message, dict) else "?"
    method = info.handlers.get(name)
    if method is None:
        known = ", ".join(sorted(info.handlers)) or "none"
        error = {
            "type": "UnknownHandlerError",
            "message": f"actor {info.name} has no handler {name!r} (handlers: {known})",
            "details": {},
        }
        return {"handler": name, "error": error}
    payload = message.get("payload") if isinstance(message, dict) else None
    try:
        result = await method(actor, ctx, payload)
        if not is_json(result):
            raise TypeError(
                f"handler {name!r} of actor {info.name} returned {type(result).__name__}, "
                "which is not JSON"
            )
    except Exception as err:  # the handler's failure is the asker's, not the actor's
        ctx.logger.warning("handler %s failed: %s: %s", name, type(err).__name__, err)
        return {"handler": name, "error": encode_error(err)}
    return {"handler": name, "result": result}


@overload
def handler(fn: H, /) -> H: ...


@overload
def handler(*, name: str | None = None) -> Callable[[H], H]: ...


def handler(fn: H | None = None, /, *, name: str | None = None) -> H | Callable[[H], H]:
    """Mark `async def method(self, ctx, payload) -> JSON` as a message handler of an actor;
    `name` (default: the method's name) is what senders address."""

    def mark(method: H) -> H:
        if not inspect.iscoroutinefunction(method):
            raise WorkflowDefinitionError(
                f"handler {method.__qualname__} must be an `async def` method taking "
                "(self, ctx, payload)"
            )
        setattr(method, _HANDLER_ATTR, name or method.__name__)
        return typing.cast(H, method)  # iscoroutinefunction narrowed away the TypeVar

    return mark(fn) if fn is not None else mark


@overload
def actor(cls: A, /) -> A: ...


@overload
def actor(
    *,
    name: str | None = None,
    version: str = "1.0.0",
    description: str = "",
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
) -> Callable[[A], A]: ...


def actor(
    cls: A | None = None,
    /,
    *,
    name: str | None = None,
    version: str = "1.0.0",
    description: str = "",
    snapshot_every: int = DEFAULT_SNAPSHOT_EVERY,
) -> A | Callable[[A], A]:
    """Declare an `Actor[State]` subclass served by workers like a workflow.

    `snapshot_every` messages after its last snapshot, an actor's history is replaced by
    one snapshot of its state (continue-as-new), so replay cost stays bounded.
    """
    if snapshot_every < 1:
        raise ValueError(f"snapshot_every must be >= 1, got {snapshot_every}")

    def declare(klass: A) -> A:
        if not (isinstance(klass, type) and issubclass(klass, Actor)):
            raise WorkflowDefinitionError(
                f"@actor decorates subclasses of loom.Actor[State], got {klass!r}"
            )
        type_name = name or klass.__name__
        if ":" in type_name or not type_name:
            raise WorkflowDefinitionError(
                f"actor name must be non-empty and contain no ':', got {type_name!r}"
            )
        handlers = _collect_handlers(klass)
        klass.__loom_actor__ = ActorInfo(type_name, handlers, snapshot_every)
        klass.__loom_info__ = WorkflowInfo(
            ACTOR_PREFIX + type_name,
            version,
            description or (klass.__doc__ or "").strip(),
            None,
        )
        klass.__loom_compiled__ = None
        klass.compile()
        return klass

    return declare(cls) if cls is not None else declare


def _collect_handlers(cls: type) -> dict[str, Callable[..., Awaitable[Any]]]:
    found: dict[str, Callable[..., Awaitable[Any]]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            label = getattr(value, _HANDLER_ATTR, None)
            if not isinstance(label, str):
                continue
            if label in found and found[label].__name__ != attr:
                raise WorkflowDefinitionError(
                    f"actor {cls.__name__}: two handlers are named {label!r}; names must be unique"
                )
            found[label] = value
    if not found:
        raise WorkflowDefinitionError(
            f"actor {cls.__name__} has no handlers; mark an async method with @loom.handler"
        )
    return found


async def send(
    actor: type[Actor[Any]] | str,
    key: str,
    handler: str,
    payload: JSON = None,
    *,
    owner: str | None = None,
    database: str | None = None,
) -> None:
    """Put a message in the mailbox of actor (`actor`, `key`), creating the actor if absent.

    Durable once this returns; a worker serving the actor handles it exactly once, after
    every message sent to that key before it. `owner` is who an actor created by this
    message works for: it then shows in `loom.get_progress(owner)`.
    """
    await _deliver(get_store(database), actor, key, handler, payload, None, owner)


async def ask(
    actor: type[Actor[Any]] | str,
    key: str,
    handler: str,
    payload: JSON = None,
    *,
    timeout: float | None = None,
    owner: str | None = None,
    database: str | None = None,
) -> Any:
    """Send a message and return the handler's return value.

    Raises ActorHandlerError when the handler raised (the actor goes on with its next
    message) and TimeoutError when `timeout` seconds pass first (the message stays sent).
    """
    store = get_store(database)
    reply_id = uuid.uuid4().hex
    await _deliver(store, actor, key, handler, payload, {"reply_id": reply_id}, owner)
    body = await _wait_reply(store, reply_id, timeout)
    return mailbox.reply_value(body)


async def _deliver(
    store: Store,
    actor: type[Actor[Any]] | str,
    key: str,
    handler: str,
    payload: JSON,
    reply: dict[str, JSON] | None,
    owner: str | None = None,
) -> None:
    start = mailbox.actor_start(actor, key, owner)
    body = mailbox.message(actor, handler, payload, reply)
    client_limits().check(f"message to actor {start.workflow_id!r}", body, "max_signal_bytes")
    await store.deliver_message(start, body)


async def _wait_reply(store: Store, reply_id: str, timeout: float | None) -> dict[str, JSON]:
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    pause = _REPLY_POLL[0]
    key = reply_key(reply_id)
    while True:
        woken = store.wakeups.closed_future(key)  # before the look: no wake-up is missed
        try:
            body = await store.take_reply(reply_id)
            if body is not None:
                return body
            wait = pause if deadline is None else min(pause, deadline - loop.time())
            if wait <= 0:
                raise TimeoutError(f"no reply to ask {reply_id} within {timeout}s")
            try:
                await asyncio.wait_for(woken, wait)
            except TimeoutError:
                pause = min(pause * 2, _REPLY_POLL[1])
        finally:
            store.wakeups.forget(key, woken)


def actor_info(cls: Any) -> ActorInfo | None:
    """The ActorInfo of an `@loom.actor` class, None for anything else."""
    info = getattr(cls, "__loom_actor__", None) if isinstance(cls, type) else None
    return info if isinstance(info, ActorInfo) else None
