"""Headless Chromium (Debian's package) for the learner page, driven by Playwright: one home for
the launch flags, shared by the browser tests and `make demo`. No browser is downloaded."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from playwright.async_api import Browser, Page, Playwright

from loqua_devstack import debian

# The machine notes' flags for headless Chromium as root on a closed network (no background
# connections, no QUIC), plus a fake microphone that needs no permission prompt.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
)


async def launch(pw: Playwright) -> Browser:
    if not debian.CHROMIUM.exists():
        raise RuntimeError(f"{debian.CHROMIUM} is missing: `make binaries` (loqua-dev build) installs it")
    return await pw.chromium.launch(executable_path=str(debian.CHROMIUM), args=list(CHROMIUM_FLAGS), headless=True)


async def page_state(page: Page) -> dict[str, Any]:
    """What the learner page shows (its ``window.loqua``)."""
    return dict(await page.evaluate("JSON.parse(JSON.stringify(window.loqua || {}))"))


async def wait_tutor(page: Page, timeout: float) -> dict[str, Any]:
    """Until the page shows a connected room with the tutor present and its session active."""
    deadline = time.monotonic() + timeout
    while True:
        st = await page_state(page)
        if st.get("connection") == "connected" and st.get("agentIdentity") and st.get("sessionStatus") == "active":
            return st
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not show the tutor within {timeout:.0f} s (page state: {st})")
        await asyncio.sleep(0.2)
