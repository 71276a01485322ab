"""The `make demo` path, smaller: same steps (build, stub servers, `loom activity register`,
`loom worker`, ResearchAgent with an approval signal) on free ports and a temporary database."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import loom
from examples.demo import ACTIVITIES, DemoOptions, run_demo
from examples.llm_stub import PAGES


@pytest.mark.timeout(180)
async def test_demo_runs_the_research_agent_to_completion(db_path: Path, tmp_path: Path) -> None:
    pages = list(PAGES)[:2]
    options = DemoOptions(
        db=db_path, llm_port=0, page_port=0, stage_dir=tmp_path / "stage", pages=pages
    )
    first = await run_demo(options)

    assert first.status is loom.WorkflowStatus.COMPLETED
    # The workflow's own time is measured apart from the builds (it is not "the demo's time").
    assert 0 < first.workflow_seconds < 120 and first.build_seconds >= 0
    assert [line.split()[0] for line in first.registered] == [f"{n}@1.0.0" for n in ACTIVITIES]
    assert first.state["approved"] is True
    assert first.state["stage"] == "done"
    assert first.state["pages"] == []
    report = first.report
    assert isinstance(report, str)
    assert report.startswith("# Research report: ")
    for slug in pages:
        assert PAGES[slug][0] in report  # the page title, read by web-fetch
        assert PAGES[slug][1].split(". ")[0] in report  # the stub's summary, via openai-chat
    # the agent's three model calls (fetch both pages, count both, answer); the secret arrived
    assert first.stub_requests == {"pages:ok": 2, "llm:ok": 3}
    sources = first.state["sources"]
    assert isinstance(sources, list)
    assert all(source["words"] > 10 for source in sources)  # word-count ran on each page


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(180)
async def test_demo_is_rerunnable_on_the_same_database(db_path: Path, tmp_path: Path) -> None:
    options = DemoOptions(
        db=db_path,
        llm_port=_free_port(),
        page_port=_free_port(),
        stage_dir=tmp_path / "stage",
        pages=["wasm-sandboxing"],
    )
    first = await run_demo(options)
    second = await run_demo(options)

    assert all(first.registered.values())
    assert second.registered.keys() == first.registered.keys()
    assert not any(second.registered.values())  # registering again is a no-op
    assert second.status is loom.WorkflowStatus.COMPLETED
    assert second.workflow_id != first.workflow_id
