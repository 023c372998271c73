"""What the headless-Chromium tests of the dashboard and console pages do alike: log in through
the form, type into a field as a user would, press a button."""

from __future__ import annotations

import json

from tests.integration.cdp import Page


async def log_in_as(page: Page, base: str, name: str, password: str, next_path: str) -> None:
    """Submit the login form and wait for ``next_path`` to have loaded."""
    await page.goto(f"{base}/dashboard/login?next={next_path}")
    await page.eval(
        f"document.getElementById('name').value = {json.dumps(name)};"
        f"document.getElementById('password').value = {json.dumps(password)};"
        "document.getElementById('login').click(); true"
    )
    try:
        await page.until(f"location.pathname === {json.dumps(next_path)}")
    except AssertionError:
        shown = await page.eval("location.href + ' ' + document.body.innerText")
        raise AssertionError(f"login as {name} failed: {shown}") from None
    await page.until("document.readyState === 'complete'")


async def set_value(page: Page, element_id: str, value: str) -> None:
    """Type into an input or pick an option, as a user's change would."""
    await page.eval(
        f"(() => {{ const c = document.getElementById({json.dumps(element_id)});"
        f" c.value = {json.dumps(value)}; c.dispatchEvent(new Event('change')); return true; }})()"
    )


async def press(page: Page, selector: str) -> None:
    """A real click on the element, scrolled into view first."""
    await page.eval(
        f"document.querySelector({json.dumps(selector)}).scrollIntoView({{block: 'center'}}); 1"
    )
    await page.click(selector)
