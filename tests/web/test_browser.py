"""The dashboard in a real headless browser (Debian's Chromium through Playwright): start a
task, watch its events, approve by clicking, see it finish; hostile text runs nothing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn

from agentflux import open_purgatory
from agentflux.web import create_app
from agentflux.workshop import MockLLMClient

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TOKEN = "browser-token"
HOSTILE = 'Fix the <script>window.pwned = 1</script> <img src=x onerror="window.pwned = 2"> parser'
LLM_REPLY = '<img src=y onerror="window.pwned = 3"><script>window.pwned = 4</script> the LLM says'


def hostile_llm(options: object) -> MockLLMClient:
    return MockLLMClient(lambda messages: LLM_REPLY)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[str]:
    async with open_purgatory(f"sqlite:///{tmp_path / 'p.db'}") as purgatory:
        port = free_port()
        app = create_app(purgatory, token=TOKEN, llm=hostile_llm)
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", timeout_graceful_shutdown=1))
        serving = asyncio.ensure_future(server.serve())
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn has no event to wait on
                await asyncio.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)


@pytest.mark.timeout(120)
async def test_start_watch_approve_and_finish_a_task_from_the_page(server: str) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            await page.goto(server + "/")
            await page.wait_for_selector('#connection[data-state="live"]', timeout=10_000)

            await page.fill("#token", TOKEN)
            await page.click("#token-form button")
            await page.fill("#description", HOSTILE)
            await page.fill("#seed", "7")
            await page.check("#llm")
            await page.click("#task-form button")

            approve = page.locator(".approval button", has_text="approve")
            await approve.wait_for(timeout=15_000)
            prompt = await page.locator(".approval .prompt").inner_text()
            assert "<script>window.pwned = 1</script>" in prompt  # shown as text
            await page.wait_for_selector('#events li[data-type="approval_requested"]', timeout=5_000)
            if os.environ.get("AGENTFLUX_SCREENSHOT"):
                await page.screenshot(path=os.environ["AGENTFLUX_SCREENSHOT"], full_page=True)
            await approve.click()

            await page.wait_for_selector('li.task[data-status="completed"]', timeout=15_000)
            await page.wait_for_selector('#events li[data-type="task_completed"]', timeout=5_000)
            await page.click("li.task button")
            await page.wait_for_selector("li.task pre", timeout=5_000)
            assert "none waiting" in await page.locator("#approvals").inner_text()
            task_text = await page.locator("li.task strong").inner_text()
            assert task_text == HOSTILE
            spoken = await page.locator('#events li[data-type="dialogue"]').all_inner_texts()
            assert any(LLM_REPLY in line for line in spoken), spoken  # the LLM's reply, as text
            shown = await page.locator("li.task .dialogue").inner_text()
            assert LLM_REPLY in shown
            assert await page.evaluate("window.pwned") is None  # neither the script nor onerror ran
            assert await page.locator("#events img, #tasks img, #approvals img, script:not([src])").count() == 0
            assert problems == []
            assert all(url.startswith(server) for url in requests)  # nothing from a CDN
        finally:
            await browser.close()


async def test_the_page_sets_a_content_security_policy_without_inline_scripts(server: str) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=server) as http:
        page = await http.get("/")
        assert page.status_code == 200
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "<script src=" in page.text
        assert "<script>" not in page.text
        script = await http.get("/static/app.js")
        assert script.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in script.text
        assert (await http.get("/static/../_app.py")).status_code == 404
        assert (await http.get("/static/nope.js")).status_code == 404
