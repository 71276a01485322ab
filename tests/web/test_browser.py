"""The dashboard in a real Chromium (Debian's `chromium`, driven by Playwright for Python):
a workflow appears live, its page shows the graph, Suspend parks it, a signal sent from the
page is kept until Resume moves it on live, user input shows as text, and no request leaves
the server.

Chromium comes from `apt-get install chromium` (`make install` does it as root); Playwright's
own browser download is never used. Without it the tests fail under CI or as root (who can
install it) and are skipped otherwise, saying why.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT
from tests.web.conftest import WebServer, start_worker, start_workflow

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / ".build" / "screenshots"
SCRIPT = "<script>alert(1)</script>"

pytestmark = pytest.mark.timeout(120)


def _no_browser_reason() -> str | None:
    if Path(CHROMIUM).exists() and shutil.which("chromium"):
        return None
    reason = f"{CHROMIUM} is missing (apt-get install -y chromium; `make install` does it as root)"
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(f"browser tests cannot run: {reason}")
    return reason


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _no_browser_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, list[str], list[str]]]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    requests: list[str] = []
    dialogs: list[str] = []
    opened.on("request", lambda request: requests.append(request.url))
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield opened, requests, dialogs
    context.close()


def test_a_workflow_lives_on_its_pages(
    page: Any, tmp_path: Path, spawn_worker: Any, serve_web: Any
) -> None:
    from playwright.sync_api import expect

    tab, requests, dialogs = page
    db = tmp_path / "loom.db"
    start_workflow(db, "wf-0", '{"name": "first"}')
    start_worker(spawn_worker, db, tmp_path)
    server: WebServer = serve_web(db)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    tab.goto(server.url + "/")
    expect(tab.locator('tr[data-workflow-id="wf-0"]')).to_be_visible()
    start_workflow(db, "wf-live", '{"name": "' + SCRIPT.replace('"', '\\"') + '"}')
    row = tab.locator('tr[data-workflow-id="wf-live"]')
    expect(row).to_be_visible(timeout=15_000)  # no reload: the SSE stream swapped it in
    expect(row.locator(".badge")).to_have_text("RUNNING", timeout=15_000)
    tab.screenshot(path=str(SCREENSHOTS / "workflows.png"), full_page=True)

    row.get_by_role("link", name="wf-live").click()
    expect(tab).to_have_url(re.compile(r"/workflows/wf-live$"))
    expect(tab.locator("#status")).to_have_text("RUNNING")
    expect(tab.locator("pre.mermaid svg")).to_be_visible(timeout=15_000)  # the step graph
    expect(tab.locator("li.step.current")).to_contain_text("approve", timeout=15_000)
    assert SCRIPT in tab.locator("#input").inner_text()  # shown as text, not run

    tab.locator("#signal-form textarea").fill("{bad json")
    tab.locator("#signal-form button").click()
    expect(tab.locator("#signal-form .result")).to_contain_text("not valid JSON")
    # Suspended from the page, the signal is kept but nothing runs until Resume.
    tab.locator("#suspend-form input[name=reason]").fill("audit <b>now</b>")
    tab.locator("#suspend-button").click()
    expect(tab.locator("#suspend-form .result")).to_have_text("Suspended.")
    expect(tab.locator("#status")).to_have_text("SUSPENDED", timeout=15_000)  # live
    expect(tab.locator(".error-box")).to_contain_text("audit <b>now</b>")  # text, not markup
    tab.locator("#signal-form input[name=name]").fill("approve")
    tab.locator("#signal-form textarea").fill('{"by": "<i>ops</i>", "ok": true}')
    tab.locator("#signal-form button").click()
    expect(tab.locator("#signal-form .result")).to_have_text("Signal approve sent.")
    expect(tab.locator("#status")).to_have_text("SUSPENDED")
    tab.locator("#resume-button").click()
    expect(tab.locator("#resume-form .result")).to_have_text("Resumed.")
    expect(tab.locator("#status")).to_have_text("COMPLETED", timeout=15_000)  # live
    expect(tab.locator("#state")).to_contain_text('"by": "<i>ops</i>"')
    expect(tab.locator("pre.mermaid svg")).to_be_visible(timeout=15_000)
    tab.screenshot(path=str(SCREENSHOTS / "workflow.png"), full_page=True)

    tab.goto(server.url + "/definitions")
    expect(tab.locator("pre.mermaid svg")).to_be_visible(timeout=15_000)
    tab.goto(server.url + "/docs")
    expect(tab.locator(".swagger-ui .info .title")).to_contain_text("loom web", timeout=15_000)
    expect(tab.locator(".opblock-summary-path").first).to_be_visible()

    # A page of another origin posting a form at the dashboard changes nothing.
    tab.goto("about:blank")
    tab.set_content(
        f'<form method="post" action="{server.url}/api/workflows/wf-0/cancel">'
        '<input name="reason" value="x"><button>go</button></form>'
    )
    with tab.expect_navigation() as refused:
        tab.locator("button").click()
    response = refused.value
    assert response is not None and response.status == 415, response
    tab.goto(server.url + "/workflows/wf-0")
    expect(tab.locator("#status")).to_have_text("RUNNING")

    assert dialogs == []
    outside = [url for url in requests if not url.startswith(server.url + "/")]
    assert outside == [], outside
