"""The ASGI app of `loom web`: pages, JSON API, Server-Sent Events, /metrics and /docs.

Reads through the public store API only (`get_store`, `list_workflows`, `get_workflow`,
`list_events`, `list_logs`, `count_tasks`, `collect_stats`), mutates through workflow
handles (signal, cancel) and streams progress with `loom.stream_progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

import loom
from loom._json import JSON
from loom.activation import ACTOR_PREFIX
from loom.client import get_handle, get_store
from loom.exceptions import (
    PayloadTooLargeError,
    WorkflowClosedError,
    WorkflowNotFoundError,
)
from loom.history import WorkflowStatus
from loom.store import Store, WorkflowRecord
from loom.summary import actor_summary, egress_json, event_json, usage_json
from loom.web import views
from loom.web.security import Guard
from loom.workflow import CompiledWorkflow

POLL_INTERVAL = 0.5
"""Seconds between reads of a live view when no in-process wakeup came (workers elsewhere)."""
PING_SECONDS = 15
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

_HERE = Path(str(resources.files("loom.web")))


class ApiError(Exception):
    def __init__(self, status: int, message: str, **fields: JSON) -> None:
        super().__init__(message)
        self.status = status
        self.fields = fields


def create_app(
    *,
    database: str | None = None,
    token: str | None = None,
    workflows: Sequence[CompiledWorkflow[Any, Any]] = (),
    poll_interval: float = POLL_INTERVAL,
) -> Any:
    """The dashboard as an ASGI app (wrapped in its security guard).

    `workflows` are the definitions the `--app` modules declared: their step graphs are shown
    and run graphs use their step names. `token` None leaves it open (loopback only: the
    command refuses other hosts without one, and the guard serves only loopback host names).
    """
    dashboard = Dashboard(database, workflows, poll_interval)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        with contextlib.suppress(Exception):
            await dashboard.store.close()

    app = FastAPI(
        title="loom web",
        version=loom.__version__,
        description="The Loom dashboard's JSON API: workflows, history, signals, cancellation, "
        "activities, stats and progress (with a Server-Sent Events stream).",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")
    app.add_exception_handler(ApiError, dashboard.api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, dashboard.http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, dashboard.invalid)  # type: ignore[arg-type]
    pages: list[tuple[str, Callable[..., Any]]] = [
        ("/", dashboard.workflows_page),
        ("/workflows/{workflow_id}", dashboard.workflow_page),
        ("/definitions", dashboard.definitions_page),
        ("/activities", dashboard.activities_page),
        ("/queue", dashboard.queue_page),
        ("/stats", dashboard.stats_page),
        ("/docs", dashboard.docs_page),
    ]
    for path, endpoint in pages:
        app.add_api_route(
            path, endpoint, methods=["GET"], response_class=HTMLResponse, include_in_schema=False
        )
    app.add_api_route("/live/workflows", dashboard.live_workflows, include_in_schema=False)
    app.add_api_route(
        "/live/workflows/{workflow_id}", dashboard.live_workflow, include_in_schema=False
    )
    get, post = ["GET"], ["POST"]
    api: list[tuple[str, Callable[..., Any], list[str], str, dict[str, Any] | None]] = [
        ("/api/workflows", dashboard.api_workflows, get, "workflows", None),
        ("/api/workflows/cancel", dashboard.api_bulk_cancel, post, "workflows", BULK_BODY),
        ("/api/workflows/{workflow_id}", dashboard.api_workflow, get, "workflows", None),
        ("/api/workflows/{workflow_id}/events", dashboard.api_events, get, "workflows", None),
        ("/api/workflows/{workflow_id}/logs", dashboard.api_logs, get, "workflows", None),
        (
            "/api/workflows/{workflow_id}/signals/{name}",
            dashboard.api_signal,
            post,
            "workflows",
            SIGNAL_BODY,
        ),
        (
            "/api/workflows/{workflow_id}/cancel",
            dashboard.api_cancel,
            post,
            "workflows",
            CANCEL_BODY,
        ),
        (
            "/api/workflows/{workflow_id}/suspend",
            dashboard.api_suspend,
            post,
            "workflows",
            SUSPEND_BODY,
        ),
        (
            "/api/workflows/{workflow_id}/resume",
            dashboard.api_resume,
            post,
            "workflows",
            EMPTY_BODY,
        ),
        ("/api/workflows/{workflow_id}/fork", dashboard.api_fork, post, "workflows", FORK_BODY),
        ("/api/actors", dashboard.api_actors, get, "actors", None),
        ("/api/activities", dashboard.api_activities, get, "activities", None),
        ("/api/definitions", dashboard.api_definitions, get, "activities", None),
        ("/api/stats", dashboard.api_stats, get, "stats", None),
        ("/api/progress/stream", dashboard.api_progress_stream, get, "progress", None),
        ("/api/progress/{owner}", dashboard.api_progress, get, "progress", None),
        ("/metrics", dashboard.metrics, get, "stats", None),
    ]
    for path, endpoint, methods, tag, extra in api:
        app.add_api_route(path, endpoint, methods=methods, tags=[tag], openapi_extra=extra)
    return Guard(app, token=token)


class Dashboard:
    """The routes' shared reads and renders over one store (each method is one route)."""

    def __init__(
        self,
        database: str | None,
        workflows: Sequence[CompiledWorkflow[Any, Any]],
        poll_interval: float,
    ) -> None:
        self.database = database
        self.store = get_store(database)
        self.definitions = {compiled.name: compiled for compiled in workflows}
        self.poll_interval = poll_interval
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.templates.env.autoescape = True
        self.templates.env.filters["compact"] = views.compact
        self.templates.env.filters["pretty"] = views.pretty
        self.templates.env.filters["when"] = _when
        self.usage = views.UsageCache()

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    # -- errors -------------------------------------------------------------------------------

    async def api_error(self, request: Request, err: ApiError) -> Response:
        body = {"error": str(err), "status": err.status, **err.fields}
        if request.url.path.startswith("/api"):
            return JSONResponse(body, status_code=err.status)
        return self.page(request, "error.html", err.status, message=str(err), code=err.status)

    async def http_error(self, request: Request, err: StarletteHTTPException) -> Response:
        if request.url.path.startswith(("/api", "/static")):
            return JSONResponse(
                {"error": str(err.detail), "status": err.status_code},
                status_code=err.status_code,
                headers=err.headers,
            )
        return self.page(
            request, "error.html", err.status_code, message=err.detail, code=err.status_code
        )

    async def invalid(self, request: Request, err: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5]]
        return JSONResponse({"error": "; ".join(problems), "status": 422}, status_code=422)

    # -- shared reads -------------------------------------------------------------------------

    async def record_of(self, workflow_id: str) -> WorkflowRecord:
        record = await self.store.get_workflow(workflow_id)
        if record is None:
            raise ApiError(404, f"no workflow with id {workflow_id!r}", workflow_id=workflow_id)
        return record

    async def listing(self, filters: Filters) -> list[WorkflowRecord]:
        if not filters.search:
            return await self.store.list_workflows(
                status=filters.status, name=filters.name, owner=filters.owner, limit=filters.limit
            )
        exact = await self.store.get_workflow(filters.search)
        if exact is not None:
            candidates = [exact]
        else:  # a part of an id: among the newest MAX_LIMIT that pass the other filters
            recent = await self.store.list_workflows(
                status=filters.status, name=filters.name, owner=filters.owner, limit=MAX_LIMIT
            )
            candidates = [r for r in recent if filters.search in r.workflow_id]
        return [r for r in candidates if filters.admits(r)][: filters.limit]

    async def detail_context(self, workflow_id: str) -> dict[str, Any]:
        record = await self.record_of(workflow_id)
        events = await self.store.list_events(workflow_id)
        logs = await self.store.list_logs(workflow_id)
        children = await self.store.get_workflows(views.child_ids(events))
        pinned = str(events[0].payload.get("source_hash", "")) if events else ""
        compiled = self.definitions.get(record.workflow_name) or (
            await self.stored_definition(record.workflow_name, pinned) if pinned else None
        )
        steps = compiled.step_names() if compiled else views.step_names(record, events)
        calls = views.activity_calls(events)
        return {
            "record": record,
            "summary": views.workflow_summary(record),
            "events": events,
            "logs": logs,
            "children": children,
            "graph": views.run_graph(record, steps),
            "steps": views.step_states(record, steps),
            "pending": [c for c in calls if c.status == "pending"],
            "calls": calls,
            "waiting_for": views.signal_waits(events),
            "llm_usage": usage_json(events),
            "egress": egress_json(events),
        }

    async def stored_definition(
        self, name: str, source_hash: str
    ) -> CompiledWorkflow[Any, Any] | None:
        """A definition registered in the database (`loom wdl register`), in the version a
        workflow pinned or, with the sha256 of a listing, that version."""
        from loom import wdl

        return await wdl.pinned(self.store, name, source_hash)

    async def all_definitions(self) -> list[CompiledWorkflow[Any, Any]]:
        """The `--app` definitions, then the latest registered version of every other name."""
        shown = dict(self.definitions)
        latest = {r.name: r for r in await self.store.list_definitions()}  # registration order
        for name, record in latest.items():
            if name not in shown:
                compiled = await self.stored_definition(name, record.sha256)
                if compiled is not None:
                    shown[name] = compiled
        return list(shown.values())

    async def stats_context(self) -> dict[str, Any]:
        return {
            "stats": await self.store.collect_stats(),
            "tasks": await self.store.count_tasks(),
            "breakers": await self.store.list_breakers(),
        }

    async def registered_activities(self) -> tuple[list[dict[str, JSON]], str | None]:
        from activity_registry import Registry
        from loom.client import database_url

        try:
            async with Registry(database_url(self.database)) as registry:
                found = await registry.list()
        except Exception as err:  # an empty or foreign database has no registry yet
            return [], f"{type(err).__name__}: {err}"
        return [a.model_dump(mode="json") for a in found], None

    # -- pages --------------------------------------------------------------------------------

    async def workflows_page(self, request: Request) -> HTMLResponse:
        filters = Filters.from_query(request)
        return self.page(
            request,
            "workflows.html",
            records=await self.listing(filters),
            filters=filters,
            statuses=[s.value for s in WorkflowStatus],
            stream_query=filters.query(),
        )

    async def workflow_page(self, request: Request, workflow_id: str) -> HTMLResponse:
        return self.page(request, "workflow.html", **await self.detail_context(workflow_id))

    async def definitions_page(self, request: Request) -> HTMLResponse:
        shown = [(c, views.definition_graph(c)) for c in await self.all_definitions()]
        return self.page(request, "definitions.html", definitions=shown)

    async def activities_page(self, request: Request) -> HTMLResponse:
        activities, problem = await self.registered_activities()
        usage = await self.usage.get(self.store)
        return self.page(
            request,
            "activities.html",
            activities=activities,
            problem=problem,
            usage=usage,
            sample=views.USAGE_SAMPLE,
            breakers=[b.to_json() for b in await self.store.list_breakers()],
        )

    async def queue_page(self, request: Request) -> HTMLResponse:
        return self.page(request, "queue.html", **await self.stats_context())

    async def stats_page(self, request: Request) -> HTMLResponse:
        return self.page(request, "stats.html", **await self.stats_context())

    async def docs_page(self, request: Request) -> HTMLResponse:
        return self.page(request, "docs.html")

    # -- live fragments (htmx SSE) ----------------------------------------------------------

    async def live_workflows(self, request: Request) -> EventSourceResponse:
        filters = Filters.from_query(request)
        rows = self.templates.get_template("_workflow_rows.html")

        async def read() -> tuple[Any, str]:
            records = await self.listing(filters)
            key = [(r.workflow_id, r.status, r.updated_at, r.step_index) for r in records]
            return key, rows.render(records=records)

        return self.fragments(request, read, "workflows")

    async def live_workflow(self, request: Request, workflow_id: str) -> EventSourceResponse:
        await self.record_of(workflow_id)
        live = self.templates.get_template("_workflow_live.html")

        async def read() -> tuple[Any, str]:
            context = await self.detail_context(workflow_id)
            record = context["record"]
            key = (record.status, record.updated_at, record.last_sequence, len(context["logs"]))
            return key, live.render(**context)

        return self.fragments(request, read, "workflow")

    def fragments(
        self, request: Request, read: Callable[[], Awaitable[tuple[Any, str]]], event: str
    ) -> EventSourceResponse:
        return EventSourceResponse(
            _fragments(self.store, request, read, event, self.poll_interval), ping=PING_SECONDS
        )

    # -- JSON API -----------------------------------------------------------------------------

    async def api_workflows(
        self,
        status: str | None = None,
        name: str | None = None,
        owner: str | None = None,
        q: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> dict[str, JSON]:
        """Workflows, newest first, filtered by status, name, owner or an id search (`q`)."""
        filters = Filters.build(status, name, owner, q, limit)
        return {"workflows": [views.workflow_summary(r) for r in await self.listing(filters)]}

    async def api_bulk_cancel(self, request: Request) -> dict[str, JSON]:
        """Cancel many workflows; each id's outcome is reported (closed ones are left)."""
        body = await _json_body(request, default={})
        if not isinstance(body, dict) or not isinstance(body.get("workflow_ids"), list):
            raise ApiError(422, 'body must be {"workflow_ids": [...], "reason": optional}')
        ids = body["workflow_ids"]
        if not all(isinstance(i, str) for i in ids) or len(ids) > MAX_LIMIT:
            raise ApiError(422, f"workflow_ids must be at most {MAX_LIMIT} strings")
        reason = _reason(body)
        results: dict[str, JSON] = {}
        for workflow_id in ids:
            results[workflow_id] = await self.cancel_one(workflow_id, reason)
        return {"results": results}

    async def cancel_one(self, workflow_id: str, reason: str | None) -> JSON:
        record = await self.store.get_workflow(workflow_id)
        if record is None:
            return {"cancelled": False, "error": "not found"}
        if record.status.is_closed:
            return {"cancelled": False, "status": record.status.value}
        await get_handle(workflow_id, database=self.database).cancel(reason)
        return {"cancelled": True}

    async def api_actors(
        self, type: str | None = None, limit: int = DEFAULT_LIMIT
    ) -> dict[str, JSON]:
        """Durable actors by id (of one `type` when given); each links to its workflow page
        at /workflows/{workflow_id}, and /?name=actor:TYPE lists them with the workflows."""
        name = None if type is None else ACTOR_PREFIX + type
        records = await self.store.list_actors(workflow_name=name, limit=min(limit, MAX_LIMIT))
        return {"actors": [actor_summary(record) for record in records]}

    async def api_workflow(self, workflow_id: str) -> dict[str, JSON]:
        """One workflow: status, input, state, error, step, children, activity calls, the
        signals it waits for; 404 when the id is unknown."""
        context = await self.detail_context(workflow_id)
        return {
            **views.workflow_detail(context["record"]),
            "children": [views.workflow_summary(c) for c in context["children"]],
            "waiting_for_signals": context["waiting_for"],
            "activities": [views.call_json(c) for c in context["calls"]],
            "usage": context["llm_usage"],
            "egress": context["egress"],
        }

    async def api_events(self, workflow_id: str, kind: str | None = None) -> dict[str, JSON]:
        """The workflow's history in sequence order (optionally only one event `kind`)."""
        await self.record_of(workflow_id)
        events = await self.store.list_events(workflow_id)
        if kind:
            events = [e for e in events if e.kind.value == kind.upper()]
        return {"workflow_id": workflow_id, "events": [event_json(e) for e in events]}

    async def api_logs(self, workflow_id: str) -> dict[str, JSON]:
        """What the workflow wrote with `ctx.logger` (time in unix ms, level, message)."""
        await self.record_of(workflow_id)
        logs = await self.store.list_logs(workflow_id)
        return {
            "workflow_id": workflow_id,
            "logs": [{"at": at, "level": level, "message": msg} for at, level, msg in logs],
        }

    async def api_signal(self, request: Request, workflow_id: str, name: str) -> dict[str, JSON]:
        """Send signal `name` with the JSON body as its payload (buffered until awaited);
        409 when the workflow has finished, 413 when the payload is over the limit."""
        payload = await _json_body(request, default=None)
        record = await self.record_of(workflow_id)
        if record.status.is_closed:
            raise ApiError(409, f"workflow {workflow_id!r} is {record.status.value}")
        try:
            await get_handle(workflow_id, database=self.database).signal(name, payload)
        except PayloadTooLargeError as err:
            raise ApiError(413, str(err)) from err
        except WorkflowClosedError as err:
            raise ApiError(409, str(err)) from err
        except WorkflowNotFoundError as err:
            raise ApiError(404, str(err), workflow_id=workflow_id) from err
        return {"workflow_id": workflow_id, "signal": name, "sent": True}

    async def api_cancel(self, request: Request, workflow_id: str) -> dict[str, JSON]:
        """Request cancellation; 409 when the workflow has already finished."""
        body = await _json_body(request, default={})
        if not isinstance(body, dict):
            raise ApiError(422, 'body must be a JSON object: {"reason": optional}')
        reason = _reason(body)
        record = await self.record_of(workflow_id)
        if record.status.is_closed:
            raise ApiError(409, f"workflow {workflow_id!r} is {record.status.value}")
        await get_handle(workflow_id, database=self.database).cancel(reason)
        return {"workflow_id": workflow_id, "cancel_requested": True}

    async def api_suspend(self, request: Request, workflow_id: str) -> dict[str, JSON]:
        """Park the workflow until resumed (signals and timers are kept); 409 when finished.
        `suspended` is False when it was suspended already."""
        body = await _json_body(request, default={})
        if not isinstance(body, dict):
            raise ApiError(422, 'body must be a JSON object: {"reason": optional}')
        reason = _reason(body)
        await self.record_of(workflow_id)
        try:
            changed = await get_handle(workflow_id, database=self.database).suspend(reason)
        except WorkflowClosedError as err:
            raise ApiError(409, str(err)) from err
        return {"workflow_id": workflow_id, "suspended": changed, "status": "SUSPENDED"}

    async def api_resume(self, request: Request, workflow_id: str) -> dict[str, JSON]:
        """Run a SUSPENDED workflow again with current code; 409 when finished.
        `resumed` is False when it was not suspended (nothing to do)."""
        body = await _json_body(request, default={})
        if not isinstance(body, dict):
            raise ApiError(422, "body must be a JSON object ({})")
        await self.record_of(workflow_id)
        try:
            changed = await get_handle(workflow_id, database=self.database).resume()
        except WorkflowClosedError as err:
            raise ApiError(409, str(err)) from err
        return {"workflow_id": workflow_id, "resumed": changed}

    async def api_fork(self, request: Request, workflow_id: str) -> dict[str, JSON]:
        """Start a new workflow from a copy of this one's history before `at` (default:
        before its first failure); 422 for a sequence outside the history or a taken id."""
        body = await _json_body(request, default={})
        if not isinstance(body, dict):
            raise ApiError(422, 'body must be a JSON object: {"at": seq, "workflow_id": id}')
        at, new_id = body.get("at"), body.get("workflow_id")
        if at is not None and (not isinstance(at, int) or isinstance(at, bool)):
            raise ApiError(422, "at must be an integer event sequence")
        if new_id is not None and (not isinstance(new_id, str) or not new_id.strip()):
            raise ApiError(422, "workflow_id must be a non-empty string")
        await self.record_of(workflow_id)
        try:
            forked = await get_handle(workflow_id, database=self.database).fork(
                at=at, workflow_id=new_id
            )
        except ValueError as err:
            raise ApiError(422, str(err)) from err
        return {"workflow_id": forked.workflow_id, "forked_from": workflow_id}

    async def api_activities(self) -> dict[str, JSON]:
        """Registered activity versions (abi, sha256, schemas, limits, grants: secret names
        only, values never reach the registry) and call counts, failures and latency over
        the newest workflows' histories, and each circuit breaker's shared state."""
        activities, problem = await self.registered_activities()
        usage = await self.usage.get(self.store)
        return {
            "activities": activities,
            "usage": {name: views.usage_json(u) for name, u in usage.items()},
            "usage_sample_workflows": views.USAGE_SAMPLE,
            "circuit_breakers": [b.to_json() for b in await self.store.list_breakers()],
            "error": problem,
        }

    async def api_definitions(self) -> dict[str, JSON]:
        """The workflow definitions the `--app` modules declare and the latest version of each
        one registered in the database, with their steps."""
        return {"definitions": [views.definition_json(c) for c in await self.all_definitions()]}

    async def api_stats(self) -> dict[str, JSON]:
        """Workflow counts by status and the task queue."""
        context = await self.stats_context()
        stats = context["stats"]
        return {
            "workflows": stats.workflows,
            "tasks": stats.tasks,
            "task_counts": context["tasks"],
            "circuit_breakers": [b.to_json() for b in context["breakers"]],
        }

    async def api_progress_stream(self, request: Request, owner: str) -> EventSourceResponse:
        """`text/event-stream`: each event's data is the JSON list `loom.stream_progress`
        yields, sent on connect and on every change."""

        async def events() -> AsyncIterator[ServerSentEvent]:
            stream = cast(
                AsyncGenerator[list[Any], None],
                loom.stream_progress(
                    owner, database=self.database, poll_interval=self.poll_interval
                ),
            )
            async with contextlib.aclosing(stream):
                async for update in stream:
                    if await request.is_disconnected():
                        break
                    yield ServerSentEvent(data=json.dumps(update), event="progress")

        return EventSourceResponse(events(), ping=PING_SECONDS)

    async def api_progress(self, owner: str) -> dict[str, JSON]:
        """Exactly `loom.get_progress(owner)`."""
        return dict(await loom.get_progress(owner, database=self.database))

    async def metrics(self) -> PlainTextResponse:
        """Prometheus text: workflows by status, the task backlog, LLM tokens by model."""
        context = await self.stats_context()
        tokens = await self.store.llm_token_totals()
        return PlainTextResponse(
            views.prometheus_text(context["stats"], context["tasks"], tokens, context["breakers"]),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )


class Filters:
    """The list filters of the page and `GET /api/workflows`."""

    def __init__(
        self,
        status: WorkflowStatus | None,
        name: str | None,
        owner: str | None,
        search: str | None,
        limit: int,
    ) -> None:
        self.status = status
        self.name = name
        self.owner = owner
        self.search = search
        self.limit = limit

    @classmethod
    def build(
        cls, status: str | None, name: str | None, owner: str | None, q: str | None, limit: int
    ) -> Filters:
        parsed = None
        if status:
            try:
                parsed = WorkflowStatus(status)
            except ValueError:
                known = ", ".join(s.value for s in WorkflowStatus)
                raise ApiError(422, f"unknown status {status!r} (one of {known})") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise ApiError(422, f"limit must be between 1 and {MAX_LIMIT}")
        return cls(parsed, name or None, owner or None, (q or "").strip() or None, limit)

    @classmethod
    def from_query(cls, request: Request) -> Filters:
        query = request.query_params
        try:
            limit = int(query.get("limit") or DEFAULT_LIMIT)
        except ValueError:
            raise ApiError(422, "limit must be a whole number") from None
        return cls.build(
            query.get("status"), query.get("name"), query.get("owner"), query.get("q"), limit
        )

    def admits(self, record: WorkflowRecord) -> bool:
        return (
            (self.status is None or record.status is self.status)
            and (self.name is None or record.workflow_name == self.name)
            and (self.owner is None or record.owner == self.owner)
        )

    def query(self) -> str:
        from urllib.parse import urlencode

        pairs = {
            "status": self.status.value if self.status else "",
            "name": self.name or "",
            "owner": self.owner or "",
            "q": self.search or "",
        }
        return urlencode({k: v for k, v in pairs.items() if v})


async def _fragments(
    store: Store,
    request: Request,
    read: Callable[[], Awaitable[tuple[Any, str]]],
    event: str,
    poll_interval: float,
) -> AsyncIterator[ServerSentEvent]:
    """An HTML fragment at once and again whenever `read`'s key changes (htmx swaps it in).

    A worker in this process wakes the stream on every commit; workers elsewhere are seen by
    polling every `poll_interval` seconds.
    """
    changed = asyncio.Event()
    unsubscribe = store.wakeups.on_progress(changed.set)
    try:
        last: Any = object()
        while not await request.is_disconnected():
            changed.clear()
            try:
                key, html = await read()
            except ApiError:
                return
            if key != last:
                last = key
                yield ServerSentEvent(data=html, event=event)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll_interval)
    finally:
        unsubscribe()


async def _json_body(request: Request, *, default: JSON) -> JSON:
    raw = await request.body()
    if not raw.strip():
        return default
    try:
        return cast(JSON, json.loads(raw))
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON: {err}") from err


def _reason(body: dict[str, Any]) -> str | None:
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ApiError(422, "reason must be a string")
    return reason or None


def _body(description: str, example: JSON) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": False,
            "description": description,
            "content": {"application/json": {"schema": {}, "example": example}},
        }
    }


BULK_BODY = _body(
    'Bulk cancel: {"workflow_ids": [...], "reason": "..."}',
    {"workflow_ids": ["wf-1", "wf-2"], "reason": "cleaning up"},
)
SIGNAL_BODY = _body("The signal's payload: any JSON value", {"approved": True})
CANCEL_BODY = _body('{"reason": "..."} (optional)', {"reason": "no longer needed"})
SUSPEND_BODY = _body('{"reason": "..."} (optional)', {"reason": "waiting for a fix"})
EMPTY_BODY = _body("{} (no fields)", {})
FORK_BODY = _body(
    '{"at": sequence, "workflow_id": "new id"} (both optional)', {"workflow_id": "order-7-retry"}
)


def _when(unix_ms: int | None) -> str:
    from datetime import UTC, datetime

    if not unix_ms:
        return "-"
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
