"""The console's Users and Audit pages in a real browser: headless Chromium over the Chrome
DevTools Protocol (tests/integration/cdp.py), against a real server started with a
configuration FILE, logging in through the dashboard's real login form.

An admin adds a supervisor, who then logs in and sees the configuration read-only (and a 403
on the Users page); the admin resets that password: the old one no longer logs in, the new one
does; the last admin cannot be demoted (422 beside the role); a hand edit of the file makes the
next save a 409 with the reload offer; the audit page lists the changes newest first with no
hash or password; a workspace_admin gets 403 from the users API. Screenshots go to the test's
temporary directory (docs/console.md "Pages"). Skipped when chromium is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipserver.listens.passwords import hash_password, verify_password
from tests.integration.cdp import Page, chromium_path, open_page
from tests.integration.conftest import ServerProcess
from tests.integration.console_ui import press, set_value

pytestmark = pytest.mark.integration

PASSWORDS = {"admin": "admin-users-password", "wsa": "wsa-users-password"}
SUE_FIRST = "sue-first-password"
SUE_SECOND = "sue-second-password"


def with_users(config: dict[str, Any]) -> None:
    config["users"] = [
        {"name": "admin", "role": "admin", "password_hash": hash_password(PASSWORDS["admin"])},
        {
            "name": "wsa",
            "role": "workspace_admin",
            "password_hash": hash_password(PASSWORDS["wsa"]),
        },
    ]


async def try_login(page: Page, base: str, name: str, password: str, next_path: str) -> str:
    """Submit the login form; the path the browser ends on (the login page when refused)."""
    await page.goto(f"{base}/dashboard/login?next={next_path}")
    await page.eval(
        f"document.getElementById('name').value = {json.dumps(name)};"
        f"document.getElementById('password').value = {json.dumps(password)};"
        "window.__before = true; document.getElementById('login').click(); true"
    )
    await page.until("!window.__before && document.readyState === 'complete'")
    path: str = await page.eval("location.pathname")
    return path


async def log_out(page: Page) -> None:
    await page.eval("document.querySelector('form[action=\"/dashboard/logout\"] button').click()")
    await page.until("location.pathname === '/dashboard/login'")


async def status_after(page: Page, selector: str) -> str:
    """Press ``selector`` and wait for the page's status line to say how it went."""
    await page.eval("document.getElementById('status').textContent = ''; true")
    await press(page, selector)
    status: str = await page.until("document.getElementById('status').textContent")
    return status


def users_in(server: ServerProcess) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(server.config_file.read_text())
    return {u["name"]: u for u in data["users"]}


async def test_admin_manages_users_and_reads_the_audit_log(
    server_factory: Any, tmp_path: Path
) -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/test installs it)")
    server: ServerProcess = server_factory(with_users)
    base = server.http_url
    shots = tmp_path
    async with open_page(
        "about:blank", tmp_path / "chromium-profile", ("--window-size=1280,1100",)
    ) as page:
        # --- the admin's top bar links to Users; the page lists the users
        path = await try_login(page, base, "admin", PASSWORDS["admin"], "/dashboard")
        assert path == "/dashboard"
        assert await page.eval(
            "!!document.querySelector('.bar a[href=\"/dashboard/settings/users\"]')"
        )
        await press(page, ".bar a[href='/dashboard/settings/users']")
        await page.until("location.pathname === '/dashboard/settings/users'")
        await page.until("document.body.dataset.ready")
        names = await page.eval(
            "[...document.querySelectorAll('#users tbody tr')].map(r => r.dataset.user)"
        )
        assert names == ["admin", "wsa"]
        assert await page.eval("document.getElementById('role-1').value") == "workspace_admin"
        await page.screenshot(shots / "users-1-list.png")

        # --- add a supervisor: a short password and a mismatch are shown beside their fields
        await press(page, "#add-user")
        await set_value(page, "user-name", "sue")
        await set_value(page, "user-role", "supervisor")
        await set_value(page, "user-password", "short")
        await set_value(page, "user-confirm", "shorter")
        await press(page, "#user-save")
        beside = await page.until(
            "document.getElementById('err-user-password').textContent + ' | '"
            " + document.getElementById('err-user-confirm').textContent"
        )
        assert beside == "must have at least 8 characters | the two passwords differ"
        await page.screenshot(shots / "users-2-errors-beside-fields.png")
        assert "sue" not in users_in(server)
        await set_value(page, "user-password", SUE_FIRST)
        await set_value(page, "user-confirm", SUE_FIRST)
        status = await status_after(page, "#user-save")
        assert status == "Added sue (supervisor).", status
        await page.until("!!document.querySelector('tr[data-user=sue]')")
        stored = users_in(server)["sue"]
        assert stored["role"] == "supervisor" and stored["password_hash"].startswith("scrypt$")
        assert verify_password(SUE_FIRST, stored["password_hash"])
        assert SUE_FIRST not in server.config_file.read_text()
        assert await page.eval("document.getElementById('user-password').value") == ""
        await page.screenshot(shots / "users-3-added.png")

        # --- the last admin cannot be demoted: 422 beside its role
        await set_value(page, "role-0", "supervisor")
        status = await status_after(
            page, "tr[data-user=admin] button[aria-label='Save the role of admin']"
        )
        assert status.startswith("Not saved"), status
        beside = await page.until("document.getElementById('err-role-0').textContent")
        assert "the last admin cannot be given another role" in beside
        assert users_in(server)["admin"]["role"] == "admin"
        await page.screenshot(shots / "users-4-last-admin.png")

        # --- sue logs in and reads the configuration; the users page is refused
        await log_out(page)
        path = await try_login(page, base, "sue", SUE_FIRST, "/dashboard/models")
        assert path == "/dashboard/models"
        await page.until("document.getElementById('status').textContent.endsWith('model(s).')")
        assert await page.eval("document.body.dataset.canWrite") == "false"
        assert await page.eval("document.getElementById('new-model').hidden")
        assert not await page.eval(
            "!!document.querySelector('.bar a[href=\"/dashboard/settings/users\"]')"
        )
        await page.goto(f"{base}/dashboard/settings/credentials")
        await page.until("document.body.dataset.ready")
        assert await page.eval("document.getElementById('add-credential').hidden")
        await page.screenshot(shots / "users-5-supervisor-read-only.png")
        await page.goto(f"{base}/dashboard/settings/users")
        assert await page.eval("document.getElementById('error-status').textContent") == "403"
        message = await page.eval("document.getElementById('error-message').textContent")
        assert message == "Only an admin manages the users; the role supervisor may not."
        answer = await page.eval("fetch('/api/users').then(r => r.status)")
        assert answer == 403

        # --- the admin resets sue's password
        await page.goto(f"{base}/dashboard")
        await log_out(page)
        path = await try_login(page, base, "admin", PASSWORDS["admin"], "/dashboard/settings/users")
        assert path == "/dashboard/settings/users"
        await page.until("document.body.dataset.ready")
        await press(page, "tr[data-user=sue] button[aria-label='Reset the password of sue']")
        await page.until("!document.getElementById('password-form').hidden")
        await set_value(page, "new-password", SUE_SECOND)
        await set_value(page, "new-confirm", SUE_SECOND)
        await page.screenshot(shots / "users-6-reset-password.png")
        status = await status_after(page, "#password-save")
        assert status == "Set a new password for sue.", status
        stored = users_in(server)["sue"]
        assert verify_password(SUE_SECOND, stored["password_hash"])
        assert stored["role"] == "supervisor"

        # --- a hand edit meanwhile: the next save is refused (409) with the reload offer
        server.config_file.write_text(server.config_file.read_text() + "# edited by hand\n")
        await set_value(page, "role-2", "viewer")
        status = await status_after(
            page, "tr[data-user=sue] button[aria-label='Save the role of sue']"
        )
        assert status.startswith("Not saved: the configuration file changed"), status
        assert await page.eval("!document.getElementById('conflict').hidden")
        await page.screenshot(shots / "users-7-conflict.png")
        await press(page, "#reload-users")
        await page.until("document.getElementById('conflict').hidden")
        assert users_in(server)["sue"]["role"] == "supervisor"
        assert server.config_file.read_text().endswith("# edited by hand\n")

        # --- the audit log, newest first, with no hash or password
        await press(page, ".bar a[href='/dashboard/settings/audit']")
        await page.until("location.pathname === '/dashboard/settings/audit'")
        await page.until("document.body.dataset.ready")
        rows = await page.eval(
            "[...document.querySelectorAll('#audit tbody tr')].map(r =>"
            " [...r.cells].slice(1, 4).map(c => c.textContent))"
        )
        assert rows == [
            ["admin (admin)", "user sue", "replace"],
            ["admin (admin)", "user sue", "create"],
        ], rows
        diffs = await page.eval(
            "[...document.querySelectorAll('#audit pre.diff')].map(p => p.textContent)"
        )
        assert "password_hash: <changed secret>" in diffs[0]
        assert "+role: supervisor" in diffs[1]
        text = await page.eval("document.documentElement.outerHTML")
        for secret in ("scrypt", SUE_FIRST, SUE_SECOND):
            assert secret not in text
        await page.screenshot(shots / "users-8-audit.png")
        audit_files = list(tmp_path.rglob("console-audit.jsonl"))
        assert len(audit_files) == 1
        logged = audit_files[0].read_text()
        assert logged.count("\n") == 2
        for secret in ("scrypt", SUE_FIRST, SUE_SECOND):
            assert secret not in logged
        server_log = server.log_path.read_text(errors="replace")
        assert "console_saved" in server_log  # the saves are logged, without the passwords
        for secret in (SUE_FIRST, SUE_SECOND, stored["password_hash"]):
            assert secret not in server_log

        # --- sue: the old password no longer logs in, the new one does
        await log_out(page)
        path = await try_login(page, base, "sue", SUE_FIRST, "/dashboard")
        assert path == "/dashboard/login"
        assert "Wrong name or password." in await page.eval("document.body.innerText")
        path = await try_login(page, base, "sue", SUE_SECOND, "/dashboard")
        assert path == "/dashboard"
        await log_out(page)

        # --- a workspace_admin edits the configuration but not the users
        path = await try_login(page, base, "wsa", PASSWORDS["wsa"], "/dashboard/models")
        assert path == "/dashboard/models"
        answers = await page.eval(
            "Promise.all([fetch('/api/users'),"
            " fetch('/api/users/x', {method: 'PUT', headers: {'Content-Type': 'application/json'},"
            "   body: JSON.stringify({role: 'admin', password: 'wsa-wants-admin'})})]"
            ").then(rs => Promise.all(rs.map(r => r.json().then(b => [r.status, b.error]))))"
        )
        reason = "only an admin manages the users; the role workspace_admin may not"
        assert answers == [[403, reason], [403, reason]], answers
        assert "x" not in users_in(server)
        # The refused requests above are the only failed ones; no script errors.
        unexpected = [e for e in page.errors if not any(
            s in e for s in ("favicon.ico", "(Unprocessable Entity)", "(Conflict)", "(Forbidden)",
                             "(Unauthorized)"))]  # fmt: skip
        assert unexpected == [], page.errors
    print(f"screenshots {shots}")
    assert all((shots / f"users-{n}.png").stat().st_size > 1000 for n in (
        "1-list", "2-errors-beside-fields", "3-added", "4-last-admin", "5-supervisor-read-only",
        "6-reset-password", "7-conflict", "8-audit"))  # fmt: skip
