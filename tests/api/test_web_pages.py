"""The web UI's pages in-process: content negotiation on ``/``, security headers, the
session cookie, CSRF, escaping of everything a publisher wrote, and pagination."""

from __future__ import annotations

import re

import httpx
import pytest
from tests.api.conftest import ALICE_PASSWORD, Api, ApiFactory

from entrepot.web.render import render_readme
from entrepot.web.snippets import connect_snippets, nerf_dart

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text[:500]
    return found.group(1)


def form_post(
    api: Api, path: str, fields: dict[str, str], cookies: dict[str, str], **headers: str
) -> httpx.Response:
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    api.client.cookies.clear()  # only the cookies this test passes
    return api.request(
        "POST",
        path,
        content=str(httpx.QueryParams(fields)).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": cookie,
            **headers,
        },
    )


def sign_in(api: Api, name: str = "alice", password: str = ALICE_PASSWORD) -> dict[str, str]:
    page = get(api, "/-/ui/signin")
    anonymous = page.cookies["entrepot_csrf"]
    cookies = {"entrepot_csrf": anonymous}
    fields = {"csrf": csrf_of(page), "name": name, "password": password, "next": "/-/ui/account"}
    response = form_post(api, "/-/ui/signin", fields, cookies)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/-/ui/account"
    return {**cookies, "entrepot_session": response.cookies["entrepot_session"]}


def get(api: Api, path: str, cookies: dict[str, str] | None = None) -> httpx.Response:
    cookie = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())
    api.client.cookies.clear()  # only the cookies this test passes
    return api.get(path, headers={**HTML, **({"Cookie": cookie} if cookie else {})})


def test_home_is_json_for_scripts_and_html_for_browsers(api: Api) -> None:
    assert api.get("/").json()["feeds"] == {"main": "http://testserver/npm/main/"}
    assert api.get("/", headers={"Accept": "application/json"}).json()["name"] == "entrepot"
    page = api.get("/", headers=HTML)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/-/ui/feed/main" in page.text and "/-/ui/feed/team" not in page.text


def test_security_headers_and_static_files(api: Api) -> None:
    page = api.get("/", headers=HTML)
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "same-origin"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in page.text and "style=" not in page.text
    script = api.get("/-/ui/static/copy.js")
    assert script.status_code == 200 and "clipboard" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert api.get("/-/ui/static/style.css").headers["content-type"].startswith("text/css")
    assert api.get("/-/ui/static/nope.js").status_code == 404


def test_session_cookie_flags_and_sign_out(make_api: ApiFactory) -> None:
    api = make_api(public_url="https://npm.example.test")
    cookies = sign_in(api)
    page = get(api, "/-/ui/signin")
    assert "secure" in page.headers["set-cookie"].lower()
    account = get(api, "/-/ui/account", cookies)
    assert account.status_code == 200 and "Signed in as <strong>alice</strong>" in account.text
    # The sign-in form's token must match the visitor's own csrf cookie.
    first, second = (get(api, "/-/ui/signin") for _ in range(2))
    fields = {"csrf": csrf_of(first), "name": "alice", "password": ALICE_PASSWORD}
    crossed = {"entrepot_csrf": second.cookies["entrepot_csrf"]}
    assert form_post(api, "/-/ui/signin", fields, crossed).status_code == 403
    # sign out revokes the session's token
    response = form_post(api, "/-/ui/signout", {"csrf": csrf_of(account)}, cookies)
    assert response.status_code == 303
    assert "entrepot_session=" in response.headers["set-cookie"]
    after = get(api, "/-/ui/account", cookies)
    assert after.status_code == 303 and after.headers["location"].startswith("/-/ui/signin")


def test_sign_in_cookie_is_http_only_lax_and_secure_over_https(make_api: ApiFactory) -> None:
    api = make_api(public_url="https://npm.example.test")
    page = get(api, "/-/ui/signin")
    fields = {"csrf": csrf_of(page), "name": "alice", "password": ALICE_PASSWORD}
    response = form_post(
        api, "/-/ui/signin", fields, {"entrepot_csrf": page.cookies["entrepot_csrf"]}
    )
    assert response.status_code == 303
    header = response.headers["set-cookie"]
    assert header.startswith("entrepot_session=ent_")
    for flag in ("HttpOnly", "SameSite=lax", "Secure", "Path=/"):
        assert flag.lower() in header.lower(), header


def test_plain_http_cookie_is_not_secure(api: Api) -> None:
    page = get(api, "/-/ui/signin")
    assert "secure" not in page.headers["set-cookie"].lower()


def test_wrong_password_and_second_factor_messages(api: Api) -> None:
    page = get(api, "/-/ui/signin")
    cookies = {"entrepot_csrf": page.cookies["entrepot_csrf"]}
    fields = {"csrf": csrf_of(page), "name": "alice", "password": "wrong password"}
    refused = form_post(api, "/-/ui/signin", fields, cookies)
    assert refused.status_code == 401 and "Incorrect user name or password." in refused.text
    assert "wrong password" not in refused.text


@pytest.mark.parametrize(
    "target", ["https://evil.example.test/", "//evil.example.test/", "/\\evil.example.test"]
)
def test_sign_in_never_redirects_off_site(api: Api, target: str) -> None:
    page = get(api, "/-/ui/signin")
    cookies = {"entrepot_csrf": page.cookies["entrepot_csrf"]}
    fields = {"csrf": csrf_of(page), "name": "alice", "password": ALICE_PASSWORD, "next": target}
    response = form_post(api, "/-/ui/signin", fields, cookies)
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_forms_without_the_right_csrf_token_change_nothing(api: Api) -> None:
    cookies = sign_in(api)
    account = get(api, "/-/ui/account", cookies)
    token = csrf_of(account)
    before = api.snapshot()
    path = "/-/ui/account/token-create"
    for fields, headers in (
        ({"description": "x"}, {}),
        ({"description": "x", "csrf": "f" * 64}, {}),
        ({"description": "x", "csrf": token}, {"Origin": "https://evil.example.test"}),
    ):
        response = form_post(api, path, fields, cookies, **headers)
        assert response.status_code == 403, response.text
        assert "text/html" in response.headers["content-type"]
    assert api.snapshot() == before
    created = form_post(api, path, {"description": "real", "csrf": token}, cookies)
    assert created.status_code == 200 and "ent_" in created.text
    # A token from another session is no good either.
    other = sign_in(api)
    response = form_post(api, path, {"description": "x", "csrf": token}, other)
    assert response.status_code == 403


def test_admin_pages_are_for_admins(api: Api) -> None:
    assert get(api, "/-/ui/admin").status_code == 303  # anonymous: sign in first
    cookies = sign_in(api)  # alice owns a feed but is no administrator
    page = get(api, "/-/ui/admin", cookies)
    assert page.status_code == 403 and "only server administrators" in page.text
    form = {"csrf": csrf_of(get(api, "/-/ui/account", cookies)), "name": "sneaky"}
    refused = form_post(api, "/-/ui/admin/feed-create", form, cookies)
    assert refused.status_code == 403
    assert api.get("/-/api/feeds/sneaky", auth=api.alice).status_code == 404


def test_everything_from_a_publisher_is_escaped(api: Api) -> None:
    evil = '<img src=x onerror="alert(1)">'
    api.publish(
        "escaped",
        "1.0.0",
        extra={
            "description": f"desc {evil}",
            "keywords": [f"kw{evil}"],
            "author": {"name": f"auth{evil}"},
            "license": f"lic{evil}",
            "homepage": "javascript:alert(1)",
            "repository": {"url": "git+https://example.test/repo.git"},
            "dependencies": {f"dep{evil}": f"^1{evil}"},
        },
    )
    for path in ("/-/ui/package/main/escaped", "/-/ui/feed/main", "/-/ui/search?q=escaped"):
        page = get(api, path)
        assert page.status_code == 200, path
        assert evil not in page.text and "onerror=" not in page.text.replace("onerror=&#34;", "")
        assert "&lt;img src=x onerror=" in page.text
    package = get(api, "/-/ui/package/main/escaped").text
    assert 'href="javascript:' not in package
    assert 'href="https://example.test/repo"' in package


def test_readme_sanitizer() -> None:
    html = str(
        render_readme(
            "# T\n<script>x()</script><img src=x onerror=y() style='a'>"
            "<a href='javascript:z()'>a</a> <a href='https://ok.test/' onclick=q()>ok</a>\n\n"
            "[m](javascript:w()) ![i](https://img.test/i.png)\n\n<iframe src=f></iframe>"
        )
    )
    for bad in ("<script", "onerror", "onclick", "javascript:", "<iframe", "style="):
        assert bad not in html.replace("[m](javascript:w())", ""), bad
    assert '<img src="x">' in html
    assert '<img src="https://img.test/i.png" alt="i">' in html
    assert 'href="https://ok.test/"' in html and 'rel="nofollow noopener noreferrer ugc"' in html


def test_package_page_of_a_scoped_name_and_missing_things(api: Api) -> None:
    api.publish("@team/lib", "1.0.0")
    for path in ("/-/ui/package/main/@team/lib", "/-/ui/package/main/@team%2flib"):
        page = get(api, path)
        assert page.status_code == 200 and "npm install @team/lib" in page.text
    assert get(api, "/-/ui/package/main/nothing-here").status_code == 404
    assert get(api, "/-/ui/feed/nope").status_code == 404
    assert get(api, "/-/ui/feed/team").status_code == 303  # private: sign in
    cookies = sign_in(api, "bob", "bob's long password")
    assert get(api, "/-/ui/feed/team", cookies).status_code == 404
    assert get(api, "/-/ui/feed/main?page=0").status_code == 400
    assert get(api, "/-/ui/nothing").status_code == 404


def test_feed_pages_paginate_newest_first(api: Api) -> None:
    for i in range(3):
        api.publish(f"paged-{i}", "1.0.0")
    page = get(api, "/-/ui/feed/main")
    order = re.findall(r'class="name" href="[^"]+">(paged-\d)<', page.text)
    assert order == ["paged-2", "paged-1", "paged-0"]
    assert "(3, newest first)" in page.text


def test_connect_snippets() -> None:
    assert nerf_dart("http://127.0.0.1:4880/npm/main/") == "//127.0.0.1:4880/npm/main/"
    assert nerf_dart("https://npm.example.test/npm/x") == "//npm.example.test/npm/x/"
    snippets = {s.key: s.text for s in connect_snippets("http://127.0.0.1:4880/npm/main/", "main")}
    assert snippets["npm-user"] == "//127.0.0.1:4880/npm/main/:_authToken=${ENTREPOT_TOKEN}\n"
    assert 'unsafeHttpWhitelist:\n  - "127.0.0.1"' in snippets["yarn"]
    assert '"url": "http://127.0.0.1:4880/npm/main"' in snippets["unity-manifest"]
    assert '[npmAuth."http://127.0.0.1:4880/npm/main"]' in snippets["unity-auth"]
    https = {s.key: s.text for s in connect_snippets("https://npm.example.test/npm/a/", "a")}
    assert "unsafeHttpWhitelist" not in https["yarn"]
