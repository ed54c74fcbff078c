"""The web UI in a real browser (Debian's Chromium driven by Playwright) against a real
``entrepot serve``: browse, sign in, copy, tokens, administration, a hostile README, and
JavaScript turned off. Screenshots of each page go to ``test-artifacts/screenshots/``."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import Server, quote_name

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PACKAGE = "@demo/widgets"
HOSTILE = "hostile-readme"
HOSTILE_README = """# Hostile readme

<script>window.__xss = "script";</script>
<img src=x onerror="window.__xss = 'onerror'">
<p onclick="window.__xss = 'onclick'" style="color: red"><b>raw html kept</b></p>
<svg onload="window.__xss = 'svg'"><circle r="4"></circle></svg>
<iframe src="javascript:window.__xss = 'iframe'"></iframe>
<a href="javascript:window.__xss = 'raw-link'">raw link</a>
<a href=" JaVaScRiPt:window.__xss = 'mixed-case'">mixed case link</a>

[markdown link](javascript:window.__xss = 'md-link')

<form action="/-/ui/signout" method="post"><button>sign out</button></form>

Some `code` and a [safe link](https://example.com/docs).
"""

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")


def tarball(manifest: dict[str, Any], readme: str) -> bytes:
    out = io.BytesIO()
    files = {
        "package.json": json.dumps(manifest).encode(),
        "index.js": b"module.exports = 1;\n",
        "README.md": readme.encode(),
    }
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


def publish(server: Server, token: str, manifest: dict[str, Any], readme: str) -> None:
    """``PUT /<name>`` with the body npm 11 sends."""
    name, version = manifest["name"], manifest["version"]
    data = tarball(manifest, readme)
    body = {
        "_id": name,
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {
            version: {
                **manifest,
                "readme": readme,
                "_id": f"{name}@{version}",
                "dist": {
                    "integrity": "sha512-"
                    + base64.b64encode(hashlib.sha512(data).digest()).decode(),
                    "shasum": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                },
            }
        },
        "_attachments": {
            f"{name}-{version}.tgz": {"data": base64.b64encode(data).decode(), "length": len(data)}
        },
    }
    result = server.request("PUT", f"/npm/main/{quote_name(name)}", body, token=token)
    assert result.status == 201, result.body


@pytest.fixture(scope="module")
def site(server: Server, admin_token: str) -> Server:
    """The server with packages to browse."""
    publish(
        server,
        admin_token,
        {"name": "left-pad-ish", "version": "1.0.0", "description": "Pads strings"},
        "# left-pad-ish\n\nPads strings on the left.\n",
    )
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        publish(
            server,
            admin_token,
            {
                "name": PACKAGE,
                "version": version,
                "description": "Widgets for <demo> & friends",
                "keywords": ["ui", "widgets"],
                "license": "MIT",
                "homepage": "https://example.com/widgets",
                "dependencies": {"left-pad-ish": "^1.0.0"},
            },
            f"# @demo/widgets\n\nVersion **{version}** of the widgets.\n\n"
            "| option | default |\n|---|---|\n| size | 3 |\n\n"
            "```js\nrequire('@demo/widgets')\n```\n",
        )
    # A whole-document PUT lists every version it keeps, so fetch them first.
    doc = server.packument(PACKAGE, token=admin_token).body
    versions = {v: {"deprecated": "use 2.x"} if v == "1.0.0" else {} for v in doc["versions"]}
    deprecate = server.request(
        "PUT",
        f"/npm/main/{quote_name(PACKAGE)}",
        {"name": PACKAGE, "versions": versions},
        token=admin_token,
    )
    assert deprecate.status == 201, deprecate.body
    publish(server, admin_token, {"name": HOSTILE, "version": "1.0.0"}, HOSTILE_README)
    return server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("ENTREPOT_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Any, site: Server) -> Iterator[Any]:
    made = browser.new_context(viewport={"width": 1280, "height": 900})
    made.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base_url)
    made.set_default_timeout(15_000)
    yield made
    made.close()


def shot(page: Any, name: str, **options: Any) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, **options)
    assert path.stat().st_size > 5000


def admin_password(server: Server) -> str:
    return (server.data_dir / "initial-admin-password").read_text().strip()


def sign_in(page: Any, server: Server, name: str = "admin", password: str | None = None) -> None:
    page.goto(server.base_url + "/-/ui/signin")
    page.fill("#name", name)
    page.fill("#password", password or admin_password(server))
    page.click("form.stacked button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("header nav").inner_text().count(name) == 1


def clipboard(page: Any) -> str:
    return str(page.evaluate("navigator.clipboard.readText()"))


# -- browsing -------------------------------------------------------------------------------


def test_home_and_feed_pages(context: Any, site: Server) -> None:
    page = context.new_page()
    response = page.goto(site.base_url + "/")
    assert response is not None and response.status == 200
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    row = page.locator("table.feeds tr", has_text="main")
    assert "3" in row.inner_text()  # three packages
    shot(page, "home")
    page.click("table.feeds a:text('main')")
    page.wait_for_url("**/-/ui/feed/main")
    listed = page.locator("ul.packages a.name").all_inner_texts()
    assert listed == [HOSTILE, PACKAGE, "left-pad-ish"]  # newest first
    connect = page.locator("aside.connect").inner_text()
    nerf = f"//127.0.0.1:{site.port}/npm/main/:_authToken=${{ENTREPOT_TOKEN}}"
    assert nerf in connect
    assert f'npmRegistryServer: "{site.registry}"' in connect
    assert 'unsafeHttpWhitelist:\n  - "127.0.0.1"' in connect
    assert f'[npmAuth."{site.registry.rstrip("/")}"]' in connect
    assert f"entrepot connect {site.registry}" in connect
    # The copy button of the user .npmrc snippet copies exactly that line.
    page.click("button[data-copy='snippet-npm-user']")
    assert clipboard(page) == nerf
    shot(page, "feed")


def test_search(context: Any, site: Server) -> None:
    page = context.new_page()
    page.goto(site.base_url + "/")
    page.fill("#home-q", "widgets")
    page.click("form.search button[type=submit]")
    page.wait_for_url("**/-/ui/search?**")
    assert page.locator("ul.packages a.name").all_inner_texts() == [PACKAGE]
    assert "1 package in main" in page.locator("p.count").inner_text()
    shot(page, "search")


def test_sign_in_browse_to_a_package_and_copy_the_install_command(
    context: Any, site: Server
) -> None:
    page = context.new_page()
    page.goto(site.base_url + "/-/ui/account")
    assert "/-/ui/signin" in page.url  # signed out: sent to sign in, then back
    page.fill("#name", "admin")
    page.fill("#password", "not the password")
    page.click("form.stacked button[type=submit]")
    assert "Incorrect user name or password" in page.locator("p.error").inner_text()
    page.fill("#password", admin_password(site))
    page.click("form.stacked button[type=submit]")
    page.wait_for_url("**/-/ui/account")
    cookie = next(c for c in context.cookies() if c["name"] == "entrepot_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.goto(site.base_url + "/-/ui/feed/main")
    page.click(f"ul.packages a:text('{PACKAGE}')")
    page.wait_for_url(f"**/-/ui/package/main/{PACKAGE}")
    assert page.locator("h1.package-name").inner_text().startswith(PACKAGE)
    assert page.locator("p.description").inner_text() == "Widgets for <demo> & friends"
    readme = page.locator("article.readme")
    assert readme.locator("strong").inner_text() == "2.0.0"
    assert readme.locator("table td").first.inner_text() == "size"
    rows = page.locator("table.versions tbody tr")
    assert rows.count() == 3
    assert "latest" in rows.nth(0).inner_text() and "admin" in rows.nth(0).inner_text()
    assert "Deprecated: use 2.x" in rows.nth(2).inner_text()
    facts = page.locator("dl.facts").inner_text()
    assert "sha512-" in facts and "MIT" in facts
    assert page.locator("ul.deps a").inner_text() == "left-pad-ish"
    button = page.locator("button[data-copy='install-command']")
    assert button.is_visible()
    button.click()
    page.wait_for_function(
        "document.querySelector(\"button[data-copy='install-command']\")"
        ".getAttribute('data-copied') !== null"
    )
    assert clipboard(page) == f"npm install {PACKAGE}"
    assert button.get_attribute("data-copied") == f"npm install {PACKAGE}"
    shot(page, "package")
    page.click("ul.deps a")
    page.wait_for_url("**/-/ui/package/main/left-pad-ish")
    assert "Pads strings on the left." in page.locator("article.readme").inner_text()


def test_hostile_readme_renders_inert(context: Any, site: Server) -> None:
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(str(dialog.message))
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(site.base_url + f"/-/ui/package/main/{HOSTILE}")
    readme = page.locator("article.readme")
    assert readme.locator("b").inner_text() == "raw html kept"
    assert readme.locator("a[href='https://example.com/docs']").count() == 1
    report = page.evaluate(
        """() => {
          const readme = document.querySelector('article.readme');
          const all = Array.from(document.querySelectorAll('*'));
          return {
            xss: typeof window.__xss,
            readmeScripts: readme.querySelectorAll('script, iframe, svg, form, style').length,
            scripts: Array.from(document.scripts).map(s => s.getAttribute('src')),
            handlers: all.filter(e => Array.from(e.attributes)
              .some(a => a.name.toLowerCase().startsWith('on'))).length,
            styled: readme.querySelectorAll('[style]').length,
            jsLinks: Array.from(document.querySelectorAll('[href], [src], [action]'))
              .map(e => e.getAttribute('href') || e.getAttribute('src') || e.getAttribute('action'))
              .filter(v => v.trim().toLowerCase().startsWith('javascript:')).length,
          };
        }"""
    )
    assert report == {
        "xss": "undefined",
        "readmeScripts": 0,
        "scripts": [report["scripts"][0]],
        "handlers": 0,
        "styled": 0,
        "jsLinks": 0,
    }
    assert report["scripts"][0].startswith("/-/ui/static/copy.js")
    assert dialogs == []
    # The markdown link to javascript: is shown as text, not as a link.
    assert "[markdown link](javascript:" in page.locator("article.readme").inner_text()
    shot(page, "hostile-readme")


# -- signed in: tokens, administration ------------------------------------------------------


def test_create_and_revoke_a_token(context: Any, site: Server) -> None:
    page = context.new_page()
    sign_in(page, site)
    page.goto(site.base_url + "/-/ui/account")
    page.fill("input[name=description]", "laptop from the browser")
    page.check("input[name=readonly]")
    page.click("form[action='/-/ui/account/token-create'] button")
    box = page.locator("section.once")
    assert "shown this once" in box.inner_text()
    page.click("button[data-copy='new-token']")
    page.wait_for_function(
        "document.querySelector(\"button[data-copy='new-token']\").hasAttribute('data-copied')"
    )
    secret = site.remember(clipboard(page))
    assert secret.startswith("ent_")
    assert page.locator("#new-token").inner_text().strip() == secret
    assert site.request("GET", "/npm/main/-/whoami", token=secret).body == {"username": "admin"}
    assert site.request("GET", "/-/api/me", token=secret).body["read_only"] is True
    shot(page, "account-new-token", mask=[page.locator("section.once pre")])
    # Reloading never shows it again.
    page.goto(site.base_url + "/-/ui/account")
    assert secret not in page.content()
    row = page.locator("table.tokens tr", has_text="laptop from the browser")
    assert "read-only" in row.inner_text()
    row.locator("button:text('Revoke')").click()
    page.wait_for_url("**/-/ui/account?done=token-revoked")
    assert "The token was revoked." in page.locator("p.notice").inner_text()
    assert page.locator("table.tokens tr", has_text="laptop from the browser").count() == 0
    assert site.request("GET", "/npm/main/-/whoami", token=secret).status == 401
    shot(page, "account")


def test_admin_adds_a_connector_and_grants_a_role(
    context: Any, site: Server, admin_token: str
) -> None:
    page = context.new_page()
    sign_in(page, site)
    page.goto(site.base_url + "/-/ui/admin")
    page.fill("form[action='/-/ui/admin/feed-create'] input[name=name]", "shared")
    page.click("form[action='/-/ui/admin/feed-create'] button")
    page.wait_for_url("**/-/ui/admin?done=feed-created")
    assert page.locator("table.feeds a:text('shared')").count() == 1
    shot(page, "admin")
    page.goto(site.base_url + "/-/ui/admin/feed/main")
    form = page.locator("#connector-form")
    form.locator("input[name=url]").fill("feed:shared")
    form.locator("input[name=name]").fill("shared-feed")
    form.locator("input[name=allow]").fill("@shared/* tools-*")
    form.locator("input[name=ttl]").fill("120")
    form.locator("button").click()
    page.wait_for_url("**/-/ui/admin/feed/main?done=connector-added")
    row = page.locator("table.connectors tbody tr")
    assert row.count() == 1 and "shared-feed" in row.inner_text()
    listed = site.request("GET", "/-/api/feeds/main/connectors", token=admin_token).body
    assert [(c["name"], c["url"], c["allow"], c["ttl"]) for c in listed] == [
        ("shared-feed", "feed:shared", ["@shared/*", "tools-*"], 120)
    ]
    # A refused form shows the page again with the reason.
    form.locator("input[name=url]").fill("ftp://nowhere.example.test/")
    form.locator("button").click()
    assert "http(s)" in page.locator("p.error").inner_text()
    site.admin(
        "user", "add", "dana", "--email", "dana@example.test", "--password-stdin",
        input=site.remember("dana's long password") + "\n",
    )  # fmt: skip
    page.goto(site.base_url + "/-/ui/admin/feed/main")
    page.select_option("form[action='/-/ui/admin/member-set'] select[name=user]", "dana")
    page.select_option("form[action='/-/ui/admin/member-set'] select[name=role]", "publisher")
    page.click("form[action='/-/ui/admin/member-set'] button")
    page.wait_for_url("**/-/ui/admin/feed/main?done=member-set")
    assert "publisher" in page.locator("table.members", has_text="dana").inner_text()
    shot(page, "admin-feed")
    page.goto(site.base_url + "/-/ui/admin/users")
    assert page.locator("table.users td:text-is('dana')").count() == 1
    shot(page, "admin-users")


def test_dark_theme(browser: Any, site: Server) -> None:
    made = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="dark")
    try:
        page = made.new_page()
        page.goto(site.base_url + f"/-/ui/package/main/{PACKAGE}")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(21, 23, 26)"
        shot(page, "package-dark")
    finally:
        made.close()


def test_everything_but_copy_works_without_javascript(browser: Any, site: Server) -> None:
    made = browser.new_context(java_script_enabled=False)
    try:
        page = made.new_page()
        sign_in(page, site)
        page.goto(site.base_url + f"/-/ui/package/main/{PACKAGE}")
        assert page.locator("button.copy").first.is_hidden()
        assert page.locator("#install-command").inner_text().strip() == f"npm install {PACKAGE}"
        page.goto(site.base_url + "/-/ui/account")
        page.fill("input[name=description]", "made without javascript")
        page.click("form[action='/-/ui/account/token-create'] button")
        secret = site.remember(page.locator("#new-token").inner_text().strip())
        assert site.request("GET", "/npm/main/-/whoami", token=secret).status == 200
        page.click("header form[action='/-/ui/signout'] button")
        page.wait_for_url("**/?done=signed-out")
        assert "Sign in" in page.locator("header nav").inner_text()
    finally:
        made.close()


def test_forms_need_their_csrf_token(context: Any, site: Server) -> None:
    """A post with the session cookie but without the page's token (or from another
    origin) is refused; the same post with the token is accepted."""
    page = context.new_page()
    sign_in(page, site)
    page.goto(site.base_url + "/-/ui/account")
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    url = site.base_url + "/-/ui/account/token-create"
    for form, headers in (
        ({"description": "forged"}, {}),
        ({"description": "forged", "csrf": "0" * 64}, {}),
        ({"description": "forged", "csrf": token}, {"Origin": "http://evil.example.test"}),
    ):
        refused = context.request.post(url, form=form, headers=headers, max_redirects=0)
        assert refused.status == 403, refused.text()
    accepted = context.request.post(url, form={"description": "real", "csrf": token})
    assert accepted.status == 200 and "shown this once" in accepted.text()
    page.goto(site.base_url + "/-/ui/account")
    tokens = page.locator("table.tokens").inner_text()
    assert "forged" not in tokens and "real" in tokens
