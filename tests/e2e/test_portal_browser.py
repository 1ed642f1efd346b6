"""The consent portal in a real headless Chromium against a real ``likeness serve``.

A person signs up, adds a passkey (Chromium's virtual authenticator over CDP), signs out,
signs in with the passkey, sees where their face was used and revokes a grant; a guardian
link and an operator's deployment are made from the pages. Names, a basis and a
description carry HTML/SQL injection payloads: the pages must show them as text.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consent.gate import ConsentGate
from consent.keys import SigningKeys
from consent.portal import accounts
from consent.store import ConsentStore
from tests.consent.test_portal_support import PASSWORD, store_grant
from tests.serving import Server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="apt-get install chromium"),
]
ARTIFACTS = Path(
    os.environ.get("LIKENESS_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
NAME = "Ann <script>window.__pwned = 1</script>"
BASIS = '<img src=x onerror="window.__pwned = 2">'
DESCRIPTION = '\'); DROP TABLE grants;-- <img src=x onerror="window.__pwned = 3">'
INJECTED = "document.querySelectorAll('main img, main script, main iframe').length"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = tmp_path_factory.mktemp("portal-e2e")
    running = Server(data).start()
    yield running
    running.stop()


async def ready(page, path: str) -> None:
    await page.goto(path)
    await page.wait_for_function("window.likeness?.portal?.ready === true", timeout=15_000)


async def signed_in(browser, base: str, role: str, errors: list[str]):
    """A page of a new browser context signed in with the password of ``role``@example.org."""
    context = await browser.new_context(base_url=base + "/")
    page = await context.new_page()
    page.on("pageerror", lambda err: errors.append(str(err)))
    await ready(page, "index.html")
    await page.fill("#signin-email", f"{role}@example.org")
    await page.fill("#signin-password", PASSWORD)
    await page.click("#signin")
    await page.wait_for_function(f"window.likeness.portal.user?.email === '{role}@example.org'")
    return page


async def clean(page) -> None:
    assert await page.evaluate("window.__pwned") is None
    assert await page.evaluate(INJECTED) == 0


async def test_portal_passkey_revoke_and_escaped_text(server, tmp_path):
    from playwright.async_api import async_playwright

    base = f"http://localhost:{server.port}/portal"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-background-networking", "--disable-sync"],
        )
        try:
            context = await browser.new_context(base_url=base + "/")
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            cdp = await context.new_cdp_session(page)
            await cdp.send("WebAuthn.enable")
            await cdp.send(
                "WebAuthn.addVirtualAuthenticator",
                {
                    "options": {
                        "protocol": "ctap2",
                        "transport": "internal",
                        "hasResidentKey": True,
                        "hasUserVerification": True,
                        "isUserVerified": True,
                    }
                },
            )

            # Sign up; the Secure, HttpOnly, SameSite=Strict cookie is kept on http://localhost.
            await ready(page, "index.html")
            await page.fill("#signup-name", NAME)
            await page.fill("#signup-email", "ann@example.org")
            await page.fill("#signup-password", PASSWORD)
            await page.click("#signup")
            await page.wait_for_function("window.likeness.portal.user?.email === 'ann@example.org'")
            cookies = {c["name"]: c for c in await context.cookies()}
            cookie = cookies["likeness_portal"]
            assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
            assert await page.evaluate("document.cookie") == ""  # HttpOnly: not for scripts
            assert NAME in await page.inner_text("#who")
            await clean(page)

            # Add a passkey, sign out, sign in with it (discoverable: no email typed).
            await page.fill("#passkey-name", "virtual authenticator")
            await page.click("#add-passkey")
            await page.wait_for_function("window.likeness.portal.passkeys?.length === 1")
            subject = await page.evaluate("window.likeness.portal.user.subject_id")
            await page.click("#signout")
            await page.wait_for_function("window.likeness.portal.user === null")
            assert "likeness_portal" not in {c["name"] for c in await context.cookies()}
            await page.click("#signin-passkey")
            await page.wait_for_function("window.likeness.portal.user?.email === 'ann@example.org'")

            # A grant and two uses of the face, made by the server side's own store.
            store = ConsentStore.open(server.data)
            keys = SigningKeys.load(server.data / "consent" / "signing")
            grant = store_grant(store, keys, subject, "ann photo")
            gate = ConsentGate(store, keys)
            for session in ("s1", "s2"):
                gate.record_use(
                    "use_start", avatar_id=grant.avatar_id, deployment="kiosk", session=session
                )
            accounts.create_user(
                store, email="carol@example.org", display_name="Carol", role="subject"
            )
            for role in ("operator", "auditor"):
                accounts.create_user(
                    store,
                    email=f"{role}@example.org",
                    display_name=role,
                    role=role,
                    password=PASSWORD,
                )

            # My grants: usage with counts, then revoke with one click + confirm.
            await ready(page, "grants.html")
            card = page.locator(f'.grant[data-grant-id="{grant.id}"]')
            assert await card.get_attribute("data-status") == "active"
            assert "Used 2 time(s)" in await card.inner_text()
            await clean(page)
            await card.locator(".revoke").click()
            assert await page.locator("#revoke-dialog").is_visible()
            await page.fill("#revoke-reason", "changed my mind")
            await page.click("#revoke-confirm")
            await page.wait_for_function(f"window.likeness.portal.revoked === '{grant.id}'")
            await page.wait_for_selector(
                f'.grant[data-grant-id="{grant.id}"][data-status="revoked"]'
            )
            assert store.grant(grant.id).revoked
            await page.screenshot(path=str(ARTIFACTS / "portal-grants.png"), full_page=True)

            # Guardians: the basis is shown as text.
            await ready(page, "guardians.html")
            await page.fill("#guardian-email", "carol@example.org")
            await page.fill("#guardian-basis", BASIS)
            await page.click("#add-guardian")
            await page.wait_for_function("window.likeness.portal.links?.length === 1")
            assert await page.inner_text(".link .basis") == BASIS
            await clean(page)

            # My data: uses counted, everything downloadable.
            await ready(page, "data.html")
            assert "Used 2 time(s)" in await page.inner_text("#usage-total")
            await page.click("#download")
            await page.wait_for_function("window.likeness.portal.exported?.subject?.id")
            assert (
                await page.evaluate("window.likeness.portal.exported.subject.display_name") == NAME
            )

            # An operator (own browser context) registers a deployment.
            op = await signed_in(browser, base, "operator", errors)
            await ready(op, "operator.html")
            await op.fill("#deployment-name", "rose-ward")
            await op.fill("#deployment-description", DESCRIPTION)
            await op.click("#save-deployment")
            await op.wait_for_function("window.likeness.portal.deployments?.length === 1")
            assert await op.inner_text(".deployment .description") == DESCRIPTION
            await clean(op)
            await op.screenshot(path=str(ARTIFACTS / "portal-operator.png"), full_page=True)

            # An auditor reads the log and sees the chain intact.
            auditor = await signed_in(browser, base, "auditor", errors)
            await ready(auditor, "audit.html")
            assert "intact" in await auditor.inner_text("#verify-result")
            assert await auditor.evaluate("window.likeness.portal.entries") > 5
            await clean(auditor)
            assert errors == []
            assert len(store.list_grants(subject)) == 1  # the grants table is still there
            store.close()
        finally:
            await browser.close()
