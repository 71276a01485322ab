"""`make demo`: the research agent end to end on the embedded SQLite default.

Builds the example activities from source, starts the local LLM stub and page server, registers
the activities with `loom activity register`, starts a `loom worker`, runs the ResearchAgent
workflow (sending the approval signal), prints the report, then stops everything it started.
Re-runnable: registering again is a no-op and each run starts a new workflow id.

Options (flags or environment): --db / LOOM_DEMO_DB (default ./loom.db), --llm-port /
LOOM_DEMO_LLM_PORT (8765), --page-port / LOOM_DEMO_PAGE_PORT (8766), --llm-endpoint /
LOOM_LLM_ENDPOINT with OPENAI_API_KEY to use a real provider instead of the stub,
--web-port / LOOM_DEMO_WEB_PORT (8000) for the dashboard (`loom web`), which is up while the
demo runs and, from a terminal, until Enter; --no-web leaves it out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # `python examples/demo.py`: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loom
from examples.build import BUILD_DIR, EXAMPLES_DIR, REPO_ROOT, build_example
from examples.llm_stub import DEFAULT_LLM_PORT, DEFAULT_PAGE_PORT, PAGES, StubServers
from examples.research_agent import (
    APPROVAL_SIGNAL,
    AWAITING_APPROVAL,
    ResearchAgent,
    ResearchInput,
)
from loom.client import get_store

__all__ = ["ACTIVITIES", "DemoOptions", "DemoResult", "main", "run_demo"]

ACTIVITIES = ["web-fetch", "word-count", "openai-chat", "md-report"]
"""The research agent's tools, in build and registration order."""

# Ports the committed manifests grant; other ports get a rewritten copy of the manifest.
_GRANTED = {
    "llm-chat": f"http://127.0.0.1:{DEFAULT_LLM_PORT}",
    "openai-chat": f"http://127.0.0.1:{DEFAULT_LLM_PORT}",
    "anthropic-chat": f"http://127.0.0.1:{DEFAULT_LLM_PORT}",
    "web-fetch": f"http://127.0.0.1:{DEFAULT_PAGE_PORT}",
}
DEMO_API_KEY = "sk-loom-demo-local"
TOPIC = "durable workflows with sandboxed tools"
OWNER = "demo"
WORKFLOW_TIMEOUT_S = 120.0
DEFAULT_WEB_PORT = 8000


@dataclass
class DemoOptions:
    db: Path = Path("loom.db")
    llm_port: int = DEFAULT_LLM_PORT
    page_port: int = DEFAULT_PAGE_PORT
    llm_endpoint: str | None = None  # a real provider; None = the local stub
    model: str | None = None
    web_port: int | None = None  # serve `loom web` while it runs (main() does; tests do not)
    reviewer: str = "the demo reviewer"
    stage_dir: Path = BUILD_DIR.parent / "demo"
    pages: list[str] = field(default_factory=lambda: list(PAGES))


@dataclass
class DemoResult:
    workflow_id: str
    status: loom.WorkflowStatus
    report: str | None
    state: dict[str, object]
    registered: dict[str, bool]  # `name@version sha256:…` -> newly registered
    stub_requests: dict[str, int]
    build_seconds: float = 0.0
    workflow_seconds: float = 0.0  # start to completion, as the store recorded it


BUILD_PROGRESS_S = 15.0


def say(message: str = "") -> None:
    print(message, flush=True)


def _loom_cli(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "loom", *args, "--db", str(db)]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, env=_child_env()
    )


def _child_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")] if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def build_activities() -> float:
    """Compile every tool from its committed sources (cached under .build/wasm); returns the
    seconds it took. A first build (the Python component) takes minutes on a slow machine, so
    it says what it is building and, every 15 s, how long so far."""
    began = time.perf_counter()
    for name in ACTIVITIES:
        started = time.perf_counter()
        done = threading.Event()

        def still_building(
            name: str = name, started: float = started, done: threading.Event = done
        ) -> None:
            while not done.wait(BUILD_PROGRESS_S):
                say(f"      … still building {name} ({time.perf_counter() - started:.0f} s)")

        say(f"      building {name} …")
        reporter = threading.Thread(target=still_building, daemon=True)
        reporter.start()
        try:
            built = build_example(name)
        finally:
            done.set()
            reporter.join()
        elapsed = time.perf_counter() - started
        say(f"      {name:<11} {built.stat().st_size:>10,} bytes  ({elapsed:.1f} s)")
    return time.perf_counter() - began


def manifest_for(name: str, net: str | None, stage_dir: Path) -> Path:
    """The manifest to register: the committed one, or a copy whose net grant is `net`.

    The committed LLM and web-fetch manifests grant the default stub ports; a run on other
    ports (the tests) or against a real provider registers a copy naming that host instead.
    """
    manifest = EXAMPLES_DIR / name / "activity.toml"
    if net is None or net == _GRANTED.get(name, net):
        return manifest
    text = manifest.read_text()
    granted = _GRANTED[name]
    text = text.replace(f'net = ["{granted}"]', f'net = ["{net}"]')
    text = text.replace(f'"{granted}/', f'"{net}/')  # the endpoint in config
    module = next(line for line in text.splitlines() if line.startswith("module = "))
    module_path = (manifest.parent / module.split('"')[1]).resolve()
    text = text.replace(module, f'module = "{module_path}"')
    staged = stage_dir / f"{name}-{re.sub(r'[^A-Za-z0-9.]+', '-', net)}" / "activity.toml"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(text)
    return staged


def register_activities(options: DemoOptions, servers: StubServers) -> dict[str, bool]:
    """`loom activity register` each tool; maps each printed `name@version sha256:…` line to
    whether it was new (False: already registered, nothing changed)."""
    llm_host = f"http://127.0.0.1:{servers.llm_port}"
    if options.llm_endpoint:
        # The grant keeps the endpoint's scheme: `https://api.openai.com` (a bare host means
        # https too, but saying so is clearer in `loom activity show`).
        parts = urlsplit(options.llm_endpoint)
        llm_host = f"{parts.scheme}://{parts.netloc}"
    nets = {"openai-chat": llm_host, "web-fetch": f"http://127.0.0.1:{servers.page_port}"}
    lines: dict[str, bool] = {}
    for name in ACTIVITIES:
        manifest = manifest_for(name, nets.get(name), options.stage_dir)
        # The demo's own tools: their net grants name the stubs it started (or the endpoint
        # given on its command line), so it approves them; for your own, review and approve.
        done = _loom_cli("activity", "register", str(manifest), "--approve-grants", db=options.db)
        if done.returncode != 0:
            raise SystemExit(
                f"registering {name} failed:\n{done.stderr.strip()}\n"
                "(a demo database from another port or endpoint? use --db with a new path)"
            )
        line = done.stdout.strip()
        lines[line] = "already registered" not in done.stderr
        say(f"      {line}")
        if not lines[line]:
            say("        (already registered: nothing changed)")
    return lines


def start_worker(options: DemoOptions, api_key: str) -> subprocess.Popen[bytes]:
    """`loom worker --app examples.research_agent` in a child process, logging to a file."""
    options.stage_dir.mkdir(parents=True, exist_ok=True)
    log = (options.stage_dir / "worker.log").open("wb")
    command = [sys.executable, "-m", "loom", "worker", "--app", "examples.research_agent"]
    command += ["--db", str(options.db), "--poll-interval", "0.05"]
    worker = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_child_env(OPENAI_API_KEY=api_key),
    )
    log.close()  # the child holds its own descriptor
    return worker


def start_dashboard(db: Path, port: int, stage_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`loom web --app examples.research_agent` on `port` (any free one if it is taken);
    returns the process and the URL it printed."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    _loom_cli("init", db=db)  # the dashboard reads an existing database
    for attempt_port in (port, 0):
        log_path = stage_dir / "web.log"
        with log_path.open("wb") as log:
            command = [sys.executable, "-m", "loom", "web", "--app", "examples.research_agent"]
            command += ["--db", str(db), "--port", str(attempt_port)]
            web = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=_child_env()
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and web.poll() is None:
            found = re.search(r"serving (http://\S+/)", log_path.read_text(errors="replace"))
            if found:
                return web, found.group(1)
            time.sleep(0.05)
        stop_worker(web)
    raise SystemExit(f"the dashboard did not start; see {stage_dir / 'web.log'}")


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM (in-flight tasks finish, leases are released), then wait; kill if it hangs."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


async def run_workflow(
    options: DemoOptions, servers: StubServers, worker: subprocess.Popen[bytes]
) -> loom.WorkflowHandle[object]:
    """Start ResearchAgent, narrate its progress, approve it when it asks, wait for the end."""
    urls = [servers.page_url(slug) for slug in options.pages]
    inputs = ResearchInput(topic=TOPIC, urls=urls, llm_endpoint=options.llm_endpoint)
    if options.model:
        inputs.model = options.model
    workflow_id = f"research-{uuid.uuid4().hex[:8]}"
    handle = await ResearchAgent.start(inputs, workflow_id=workflow_id, owner=OWNER)
    say(f"      started {workflow_id} ({len(urls)} sources, topic: {TOPIC!r})")
    deadline = time.monotonic() + WORKFLOW_TIMEOUT_S
    said: set[str] = set()
    signalled = False
    while True:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode}; see its log")
        progress = await loom.get_progress(owner=OWNER)
        for entry in progress["workflows"]:
            if entry["workflow_id"] == workflow_id and entry["message"] not in said:
                said.add(entry["message"])
                step = f"step {entry['current_step']}/{entry['total_steps']}"
                say(f"      {entry['message']}  ({step})")
        status = await handle.status()
        if status.is_closed:
            break
        state = await handle.state()
        if not signalled and state.get("stage") == AWAITING_APPROVAL:
            decision = {"approved": True, "reviewer": options.reviewer, "note": "looks good"}
            say(f"      -> signal {APPROVAL_SIGNAL!r} {decision}")
            await handle.signal(APPROVAL_SIGNAL, decision)
            signalled = True
        if time.monotonic() > deadline:
            raise SystemExit(f"{workflow_id} did not finish in {WORKFLOW_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.05)
    return handle


async def run_demo(options: DemoOptions) -> DemoResult:
    """Every step of the demo; also what `tests/examples` runs (on free ports, a temp DB)."""
    api_key = os.environ.get("OPENAI_API_KEY") if options.llm_endpoint else None
    api_key = api_key or DEMO_API_KEY
    loom.configure(database=options.db)
    say("[1/6] building the example activities from source (C reactors, Python component)")
    build_seconds = build_activities()
    llm_port = 0 if options.llm_endpoint else options.llm_port
    with ExitStack() as stack:
        try:
            servers = StubServers(llm_port=llm_port, page_port=options.page_port, api_key=api_key)
        except OSError as err:
            raise SystemExit(
                f"cannot start the local servers: {err}; pick free ports with "
                "--llm-port/--page-port (the manifests' grants follow them)"
            ) from err
        stack.enter_context(servers)
        llm = options.llm_endpoint or servers.llm_endpoint
        say(f"[2/6] local servers up: LLM {llm}, pages http://127.0.0.1:{servers.page_port}/")
        say(f"[3/6] registering activities in {options.db} (loom activity register)")
        registered = register_activities(options, servers)
        say("[4/6] starting a worker: loom worker --app examples.research_agent")
        worker = start_worker(options, api_key)
        stack.callback(stop_worker, worker)
        say("[5/6] running the ResearchAgent workflow")
        handle = await run_workflow(options, servers, worker)
        status = await handle.status()
        state = await handle.state()
        requests = dict(servers.requests)
        record = await get_store().get_workflow(handle.workflow_id)
        workflow_seconds = (record.updated_at - record.created_at) / 1000 if record else 0.0
    say("[6/6] stopped the worker and the local servers")
    return DemoResult(
        workflow_id=handle.workflow_id,
        status=status,
        report=state.get("report"),  # type: ignore[arg-type]  # JSON from the state
        state=state,
        registered=registered,
        stub_requests=requests,
        build_seconds=build_seconds,
        workflow_seconds=workflow_seconds,
    )


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it is inside it, shell-quoted."""
    try:
        return shlex.quote(str(path.resolve().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))


def _print_result(result: DemoResult, options: DemoOptions) -> None:
    loom_bin = _shown(Path(sys.executable).with_name("loom"))
    db = "" if options.db.resolve() == Path("loom.db").resolve() else f" --db {_shown(options.db)}"
    wid = result.workflow_id
    say()
    say(result.report or f"(no report; the workflow ended {result.status.value})")
    commands = [
        (f"inspect {wid}{db}", "status, current step, state"),
        (f"inspect {wid} --json{db}", "… as JSON, with the LLM usage and cost (LOOM_PRICES)"),
        (f"inspect {wid} --events{db}", "the whole history"),
        (f"logs {wid}{db}", "what the agent logged"),
        (f"activity list{db}", "the registered tools"),
    ]
    width = max(len(command) for command, _ in commands)
    say("Look at it:")
    for command, what in commands:
        say(f"  {loom_bin} {command:<{width}}  # {what}")
    say()


def parse_options(argv: list[str] | None) -> DemoOptions:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path(env("LOOM_DEMO_DB", "loom.db")))
    parser.add_argument(
        "--llm-port", type=int, default=int(env("LOOM_DEMO_LLM_PORT", DEFAULT_LLM_PORT))
    )
    parser.add_argument(
        "--page-port", type=int, default=int(env("LOOM_DEMO_PAGE_PORT", DEFAULT_PAGE_PORT))
    )
    parser.add_argument("--llm-endpoint", default=env("LOOM_LLM_ENDPOINT"))
    parser.add_argument("--model", default=env("LOOM_LLM_MODEL"))
    parser.add_argument(
        "--web-port", type=int, default=int(env("LOOM_DEMO_WEB_PORT", DEFAULT_WEB_PORT))
    )
    parser.add_argument("--no-web", action="store_true", help="Do not serve the dashboard.")
    args = parser.parse_args(argv)
    return DemoOptions(
        web_port=None if args.no_web else args.web_port,
        db=args.db.resolve(),
        llm_port=args.llm_port,
        page_port=args.page_port,
        llm_endpoint=args.llm_endpoint,
        model=args.model,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    started = time.perf_counter()
    with ExitStack() as stack:
        url = None
        if options.web_port is not None:
            web, url = start_dashboard(options.db, options.web_port, options.stage_dir)
            stack.callback(stop_worker, web)
            say(f"[web] dashboard: {url} (watch the agent live; --no-web to leave it out)")
        result = asyncio.run(run_demo(options))
        _print_result(result, options)
        code = _print_outcome(result, time.perf_counter() - started)
        if url is not None:
            if sys.stdin.isatty():
                say(
                    f"The dashboard stays up at {url}workflows/{result.workflow_id}: "
                    "press Enter to stop it."
                )
                with contextlib.suppress(EOFError, KeyboardInterrupt):
                    input()
            else:
                say("Stopping the dashboard (no terminal to wait on).")
    return code


def _print_outcome(result: DemoResult, elapsed: float) -> int:
    if result.status is loom.WorkflowStatus.COMPLETED:
        say(
            f"Demo completed: workflow {result.workflow_id} ran {result.workflow_seconds:.1f} s "
            f"from start to completion (builds {result.build_seconds:.1f} s, "
            f"{elapsed:.1f} s in all)."
        )
        return 0
    say(f"Demo failed: workflow {result.workflow_id} ended {result.status.value}.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
