"""The web UI's routes: ``/`` (for browsers) and ``/-/ui/...``.

Pages are rendered on the server and work without JavaScript (the one script only adds copy
buttons). Every change is a POST of a form carrying a CSRF token, handled by the same
:class:`~entrepot.http.admin_api.Operations` as the admin API, then a redirect (303) back to
a page. Every listing is one indexed query and one page: nothing loads a whole feed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from entrepot.auth import Authenticator, Principal
from entrepot.errors import BadRequest, Forbidden, NotFound, RegistryError, Unauthorized
from entrepot.http.admin_api import (
    MAX_OFFSET,
    SESSION_DESCRIPTION,
    Operations,
    connector_json,
    package_json,
)
from entrepot.http.bodies import read_form
from entrepot.http.paths import take_package_name
from entrepot.npm.packument import full_document
from entrepot.storage.base import ROLES
from entrepot.web import sessions
from entrepot.web.render import STATIC_FILES, render_page, render_readme
from entrepot.web.snippets import connect_snippets
from entrepot.web.views import package_path, package_view

PAGE_SIZE = 50
SEARCH_SIZE = 20

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' https: http:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

#: What a redirect after a successful form may say (fixed texts: nothing from the URL).
NOTICES = {
    "signed-out": "You are signed out.",
    "token-revoked": "The token was revoked.",
    "totp-off": "Two-factor authentication is off.",
    "feed-created": "The feed was created.",
    "feed-deleted": "The feed was deleted, with everything in it.",
    "feed-changed": "The feed's visibility was changed.",
    "connector-added": "The connector was added at the end of the list.",
    "connector-removed": "The connector was removed, with its cache.",
    "member-set": "The role was granted.",
    "member-removed": "The role was taken away.",
    "user-added": "The user was added.",
    "user-deleted": "The user was deleted, with their tokens and roles.",
    "password-set": "The password was changed.",
}


@dataclasses.dataclass
class Visit:
    """One browser request: who (from the session cookie) and the form token to embed."""

    request: Request
    principal: Principal | None
    secret: str | None
    csrf: str
    new_csrf_cookie: bool = False
    stale_cookie: bool = False


Action = Callable[["WebUI", Visit, dict[str, str]], Awaitable[Response]]


def redirect(path: str, notice: str | None = None) -> Response:
    target = f"{path}{'&' if '?' in path else '?'}done={notice}" if notice else path
    return RedirectResponse(target, status_code=303, headers=HEADERS)


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this server, nothing else."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


def pages(total: int, size: int) -> int:
    return max(1, math.ceil(total / size))


class WebUI:
    """Handlers for the browser pages."""

    def __init__(
        self,
        ops: Operations,
        auth: Authenticator,
        origin_of: Callable[[Request], str],
        issuer_of: Callable[[Request], str],
    ) -> None:
        self.ops = ops
        self.meta = ops.meta
        self.registry = ops.registry
        self.auth = auth
        self.origin_of = origin_of
        self.issuer_of = issuer_of

    # -- plumbing ---------------------------------------------------------------------------

    async def visit(self, request: Request) -> Visit:
        secret = sessions.session_secret(request)
        principal = None
        if secret:
            client = request.client.host if request.client else None
            try:
                principal = await self.auth.authenticate(f"Bearer {secret}", client)
            except Unauthorized:
                return Visit(request, None, None, *self._anonymous_csrf(request), stale_cookie=True)
            return Visit(request, principal, secret, sessions.csrf_token(secret))
        return Visit(request, None, None, *self._anonymous_csrf(request))

    @staticmethod
    def _anonymous_csrf(request: Request) -> tuple[str, bool]:
        return sessions.anonymous_csrf(request)

    def secure(self, request: Request) -> bool:
        return sessions.is_secure(request, self.origin_of(request))

    def page(
        self, visit: Visit, template: str, context: Mapping[str, Any], status: int = 200
    ) -> Response:
        done = visit.request.query_params.get("done", "")
        body = render_page(
            template,
            {
                "me": visit.principal,
                "csrf": visit.csrf,
                "path": visit.request.url.path,
                "notice": NOTICES.get(done, ""),
                **context,
            },
        )
        response = HTMLResponse(body, status_code=status, headers=HEADERS)
        response.headers["Cache-Control"] = "no-store"
        self._cookies(visit, response)
        return response

    def _cookies(self, visit: Visit, response: Response) -> None:
        secure = self.secure(visit.request)
        if visit.new_csrf_cookie:
            sessions.set_cookie(
                response, sessions.CSRF_COOKIE, visit.csrf, secure=secure, max_age=86400
            )
        if visit.stale_cookie:
            sessions.clear_cookie(response, sessions.SESSION_COOKIE, secure=secure)

    def error(self, visit: Visit, exc: RegistryError) -> Response:
        title = {401: "Sign-in needed", 403: "Not allowed", 404: "Not found"}.get(
            exc.status_code, "Something went wrong"
        )
        context = {"title": title, "message": exc.message}
        response = self.page(visit, "error.html", context, exc.status_code)
        if "Retry-After" in exc.headers:
            response.headers["Retry-After"] = exc.headers["Retry-After"]
        return response

    def feed_url(self, request: Request, feed: str) -> str:
        return f"{self.origin_of(request)}/npm/{feed}/"

    # -- routing ----------------------------------------------------------------------------

    async def route(self, request: Request, rest: list[str]) -> Response:
        """``/-/ui/<rest>``."""
        if rest[:1] == ["static"] and len(rest) == 2:
            return self.static(rest[1])
        visit = await self.visit(request)
        try:
            return await self._route(visit, rest)
        except Unauthorized as exc:
            if request.method == "GET" and visit.principal is None:
                path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return redirect("/-/ui/signin?" + urlencode({"next": path}))
            return self.error(visit, exc)
        except RegistryError as exc:
            return self.error(visit, exc)

    async def _route(self, visit: Visit, rest: list[str]) -> Response:
        method = visit.request.method
        if method == "POST":
            action = ACTIONS.get(tuple(rest))
            if action is None:
                raise NotFound("no such form")
            form = await read_form(visit.request)
            sessions.check_form(visit.request, form, visit.secret, self.origin_of(visit.request))
            return await action(self, visit, form)
        if method not in ("GET", "HEAD"):
            raise NotFound("no such page")
        head = rest[0] if rest else ""
        if head == "feed" and len(rest) == 2:
            return await self.feed_page(visit, rest[1])
        if head == "package" and len(rest) >= 3:
            name, tail = take_package_name(rest[2:])
            if tail:
                raise NotFound("no such page")
            return await self.package_page(visit, rest[1], name)
        if rest == ["search"]:
            return await self.search_page(visit)
        if rest == ["signin"]:
            return self.signin_page(visit)
        if rest == ["account"]:
            return await self.account_page(visit)
        if rest == ["admin"]:
            return await self.admin_page(visit)
        if rest == ["admin", "users"]:
            return await self.users_page(visit)
        if head == "admin" and len(rest) == 3 and rest[1] == "feed":
            return await self.admin_feed_page(visit, rest[2])
        raise NotFound("no such page")

    def static(self, name: str) -> Response:
        found = STATIC_FILES.get(name)
        if found is None:
            raise NotFound("no such file")
        headers = {**HEADERS, "Cache-Control": "public, max-age=86400"}
        return Response(found[0], media_type=found[1], headers=headers)

    # -- browsing ---------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        visit = await self.visit(request)
        try:
            feeds = await self.ops.feeds(visit.principal)
        except RegistryError as exc:
            return self.error(visit, exc)
        rows = [{"feed": f, "count": n, "url": self.feed_url(request, f.name)} for f, n in feeds]
        return self.page(visit, "home.html", {"title": "Feeds", "feeds": rows})

    async def search_page(self, visit: Visit) -> Response:
        params = visit.request.query_params
        feeds = [f.name for f, _ in await self.ops.feeds(visit.principal)]
        feed = params.get("feed") or ("main" if "main" in feeds else (feeds or ["main"])[0])
        text = params.get("q", "")[:200]
        page = _page_number(params.get("page"))
        _, entries, total = await self.ops.search(visit.principal, feed, text, page, SEARCH_SIZE)
        context = {
            "title": f"Search {feed}",
            "feed": feed,
            "feeds": feeds,
            "q": text,
            "results": [_listed(feed, e) for e in entries],
            "total": total,
            "page": page,
            "pages": pages(min(total, MAX_OFFSET), SEARCH_SIZE),
            "page_link": lambda n: (
                "/-/ui/search?" + urlencode({"feed": feed, "q": text, "page": n})
            ),
        }
        return self.page(visit, "search.html", context)

    async def feed_page(self, visit: Visit, name: str) -> Response:
        page = _page_number(visit.request.query_params.get("page"))
        feed, entries, total = await self.ops.packages(visit.principal, name, page, PAGE_SIZE)
        url = self.feed_url(visit.request, feed.name)
        connectors = len(await self.meta.list_connectors(feed.id))
        context = {
            "title": feed.name,
            "feed": feed,
            "registry_url": url,
            "packages": [_listed(feed.name, e) for e in entries],
            "total": total,
            "page": page,
            "pages": pages(min(total, MAX_OFFSET), PAGE_SIZE),
            "page_link": lambda n: f"/-/ui/feed/{quote(feed.name)}?page={n}",
            "connectors": connectors,
            "snippets": connect_snippets(url, feed.name),
        }
        return self.page(visit, "feed.html", context)

    async def package_page(self, visit: Visit, feed_name: str, name: str) -> Response:
        feed = await self.registry.feed(feed_name, visit.principal)
        base = self.feed_url(visit.request, feed.name)
        package = await self.meta.get_package(feed.id, name)
        if package is not None and package.versions:
            doc = full_document(package, base)
            sizes = {v: stored.size for v, stored in package.versions.items()}
            local = True
        else:
            rendered = await self.registry.packument(feed, name, abbreviated=False, feed_base=base)
            doc, sizes, local = orjson.loads(rendered.body), {}, False
        every = visit.request.query_params.get("versions") == "all"
        view = package_view(doc, feed.name, local=local, sizes=sizes, all_versions=every)
        context = {
            "title": view.name,
            "view": view,
            "readme": render_readme(view.readme) if view.readme else None,
            "registry_url": base,
            "feed_path": f"/-/ui/feed/{quote(feed.name)}",
            "all_path": package_path(feed.name, view.name) + "?versions=all",
        }
        return self.page(visit, "package.html", context)

    # -- signing in -------------------------------------------------------------------------

    def signin_page(
        self,
        visit: Visit,
        error: str = "",
        name: str = "",
        status: int = 200,
        next_path: str | None = None,
    ) -> Response:
        next_path = safe_next(next_path or visit.request.query_params.get("next"))
        context = {"title": "Sign in", "error": error, "name": name, "next": next_path}
        return self.page(visit, "signin.html", context, status)

    async def sign_in(self, visit: Visit, form: dict[str, str]) -> Response:
        name, password = form.get("name", "").strip(), form.get("password", "")
        client = visit.request.client.host if visit.request.client else None
        try:
            user = await self.auth.check_password(name, password, client)
            await self.auth.check_second_factor(user, form.get("otp") or None)
        except Unauthorized as exc:
            otp = exc.headers.get("WWW-Authenticate") == "OTP"
            message = exc.message if otp else "Incorrect user name or password."
            return self.signin_page(visit, message, name, 401, form.get("next"))
        except RegistryError as exc:
            return self.signin_page(visit, exc.message, name, exc.status_code, form.get("next"))
        secret, _ = await self.auth.issue_token(
            user, expires_days=sessions.SESSION_DAYS, description=SESSION_DESCRIPTION
        )
        response = redirect(safe_next(form.get("next")))
        max_age = int(sessions.SESSION_DAYS * 86400)
        secure = self.secure(visit.request)
        sessions.set_cookie(
            response, sessions.SESSION_COOKIE, secret, secure=secure, max_age=max_age
        )
        return response

    async def sign_out(self, visit: Visit, form: dict[str, str]) -> Response:
        if visit.principal is not None and visit.principal.token_key:
            await self.meta.revoke_token(visit.principal.token_key)
        response = redirect("/", "signed-out")
        sessions.clear_cookie(response, sessions.SESSION_COOKIE, secure=self.secure(visit.request))
        return response

    # -- my account -------------------------------------------------------------------------

    async def account_page(
        self, visit: Visit, extra: Mapping[str, Any] | None = None, status: int = 200
    ) -> Response:
        user = await self.ops.user_of(visit.principal)
        assert visit.principal is not None
        tokens = await self.ops.tokens(visit.principal)
        feeds = [f.name for f, _ in await self.ops.feeds(visit.principal)]
        uri = None
        if user.totp_pending and not user.totp_secret:
            uri = f"otpauth://totp/{quote(self.issuer_of(visit.request))}:{quote(user.name)}"
            uri += "?" + urlencode(
                {"secret": user.totp_pending, "issuer": self.issuer_of(visit.request)}
            )
        context = {
            "title": "My account",
            "user": user,
            "tokens": tokens,
            "current_key": visit.principal.token_key,
            "session_description": SESSION_DESCRIPTION,
            "feeds": feeds,
            "totp_uri": uri,
            "default_feed": self.feed_url(visit.request, feeds[0] if feeds else "main"),
            **(extra or {}),
        }
        return self.page(visit, "account.html", context, status)

    # -- administration ---------------------------------------------------------------------

    async def admin_page(self, visit: Visit, error: str = "", status: int = 200) -> Response:
        await self.ops.require_admin(visit.principal)
        feeds = await self.ops.feeds(visit.principal)
        rows = [{"feed": f, "count": n} for f, n in feeds]
        context = {"title": "Administration", "feeds": rows, "error": error}
        return self.page(visit, "admin.html", context, status)

    async def admin_feed_page(
        self, visit: Visit, name: str, error: str = "", status: int = 200
    ) -> Response:
        connectors = await self.ops.connectors(visit.principal, name)
        members = await self.ops.members(visit.principal, name)
        users = [u.name for u in await self.ops.users(visit.principal)]
        context = {
            "title": f"Feed {name}",
            "feed_name": name,
            "connectors": [connector_json(c) for c in connectors],
            "members": members,
            "users": users,
            "roles": ROLES,
            "error": error,
        }
        return self.page(visit, "admin_feed.html", context, status)

    async def users_page(self, visit: Visit, error: str = "", status: int = 200) -> Response:
        users = await self.ops.users(visit.principal)
        context = {"title": "Users", "users": users, "error": error}
        return self.page(visit, "admin_users.html", context, status)


def _page_number(value: str | None) -> int:
    if value is None or value == "":
        return 1
    if not (value.isascii() and value.isdigit()) or len(value) > 6 or int(value) < 1:
        raise BadRequest("the page number must be a whole number from 1")
    return int(value)


def _listed(feed: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    return {**package_json(entry), "path": package_path(feed, str(entry.get("name", "")))}


# -- form actions: each calls one operation, then redirects (or shows the page again) --------


async def _sign_in(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
    return await ui.sign_in(visit, form)


async def _sign_out(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
    return await ui.sign_out(visit, form)


async def _on_account(
    ui: WebUI, visit: Visit, work: Awaitable[Mapping[str, Any] | str]
) -> Response:
    try:
        result = await work
    except RegistryError as exc:
        if isinstance(exc, Unauthorized) and visit.principal is None:
            raise
        return await ui.account_page(visit, {"error": exc.message}, exc.status_code)
    if isinstance(result, str):
        return redirect("/-/ui/account", result)
    return await ui.account_page(visit, result)


async def _token_create(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
    async def work() -> Mapping[str, Any]:
        body: dict[str, Any] = {
            "description": form.get("description", ""),
            "readonly": form.get("readonly") == "on",
            "feeds": [form["feed"]] if form.get("feed") else [],
        }
        if form.get("expires_days"):
            try:
                body["expires_days"] = float(form["expires_days"])
            except ValueError:
                raise BadRequest("the expiry must be a number of days") from None
        secret, token = await ui.ops.create_token(visit.principal, body)
        return {"new_token": secret, "new_token_key": token.key}

    return await _on_account(ui, visit, work())


async def _token_revoke(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
    async def work() -> str:
        await ui.ops.revoke_token(visit.principal, form.get("key", ""))
        return "token-revoked"

    if visit.principal is not None and form.get("key") == visit.principal.token_key:
        return await ui.account_page(
            visit, {"error": "That token is this browser's session: use Sign out."}, 400
        )
    return await _on_account(ui, visit, work())


async def _totp_start(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
    async def work() -> Mapping[str, Any]:
        client = visit.request.client.host if visit.request.client else None
        issuer = ui.issuer_of(visit.request)
        await ui.ops.start_totp(visit.principal, form.get("password", ""), client, issuer)
        return {}

    return await _on_account(ui, visit, work())


async def _totp_confirm(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
    async def work() -> Mapping[str, Any]:
        codes = await ui.ops.confirm_totp(visit.principal, form.get("code", ""))
        return {"recovery_codes": codes}

    return await _on_account(ui, visit, work())


async def _totp_disable(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
    async def work() -> str:
        client = visit.request.client.host if visit.request.client else None
        password, otp = form.get("password", ""), form.get("otp") or None
        await ui.ops.disable_totp(visit.principal, password, otp, client)
        return "totp-off"

    return await _on_account(ui, visit, work())


AdminWork = Callable[[Operations, Principal | None, dict[str, str]], Awaitable[str]]


def _admin_action(page: str, work: AdminWork) -> Action:
    """An admin form: do the work, then back to ``page`` (the feed's own page for
    ``feed``); on a refusal, that page again with the message."""

    async def action(ui: WebUI, visit: Visit, form: dict[str, str]) -> Response:
        feed = form.get("feed", "")
        try:
            notice = await work(ui.ops, visit.principal, form)
        except RegistryError as exc:
            if isinstance(exc, Unauthorized | Forbidden) and not _is_admin(visit):
                raise
            if page == "feed":
                return await ui.admin_feed_page(visit, feed, exc.message, exc.status_code)
            if page == "users":
                return await ui.users_page(visit, exc.message, exc.status_code)
            return await ui.admin_page(visit, exc.message, exc.status_code)
        target = {
            "feed": f"/-/ui/admin/feed/{quote(feed, safe='')}",
            "users": "/-/ui/admin/users",
        }.get(page, "/-/ui/admin")
        return redirect(target, notice)

    return action


def _is_admin(visit: Visit) -> bool:
    p = visit.principal
    return p is not None and p.admin and not p.read_only and not p.feeds


async def _feed_create(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    body = {"name": form.get("name", "").strip(), "private": form.get("private") == "on"}
    await ops.create_feed(p, body)
    return "feed-created"


async def _feed_delete(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    feed = form.get("feed", "")
    await ops.require_admin(p)
    if form.get("confirm", "").strip() != feed:
        raise BadRequest(f"type the feed's name ({feed}) to confirm that it should be deleted")
    await ops.delete_feed(p, feed)
    return "feed-deleted"


async def _feed_private(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    await ops.update_feed(p, form.get("feed", ""), {"private": form.get("private") == "1"})
    return "feed-changed"


def _words(text: str) -> list[str]:
    return [w for w in text.replace(",", " ").split() if w]


async def _connector_add(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    body: dict[str, Any] = {
        "url": form.get("url", "").strip(),
        "name": form.get("name", "").strip() or None,
        "token_env": form.get("token_env", "").strip() or None,
        "basic_env": form.get("basic_env", "").strip() or None,
        "allow": _words(form.get("allow", "")),
        "block": _words(form.get("block", "")),
    }
    for key in ("min_age_hours", "ttl"):
        if form.get(key, "").strip():
            try:
                number = float(form[key])
            except ValueError:
                raise BadRequest(f"{key} must be a number") from None
            body[key] = int(number) if key == "ttl" and number.is_integer() else number
    await ops.add_connector(p, form.get("feed", ""), body)
    return "connector-added"


async def _connector_remove(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    await ops.remove_connector(p, form.get("feed", ""), form.get("name", ""))
    return "connector-removed"


async def _member_set(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    body = {"role": form.get("role", "")}
    await ops.set_member(p, form.get("feed", ""), form.get("user", "").strip(), body)
    return "member-set"


async def _member_remove(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    await ops.remove_member(p, form.get("feed", ""), form.get("user", ""))
    return "member-removed"


async def _user_add(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    body = {
        "name": form.get("name", "").strip(),
        "email": form.get("email", "").strip(),
        "password": form.get("password") or None,
        "admin": form.get("admin") == "on",
    }
    await ops.add_user(p, body)
    return "user-added"


async def _user_delete(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    if form.get("confirm") != "on":
        raise BadRequest("tick the box to confirm that the user should be deleted")
    await ops.delete_user(p, form.get("user", ""))
    return "user-deleted"


async def _user_password(ops: Operations, p: Principal | None, form: dict[str, str]) -> str:
    await ops.update_user(p, form.get("user", ""), {"password": form.get("password", "")})
    return "password-set"


ACTIONS: dict[tuple[str, ...], Action] = {
    ("signin",): _sign_in,
    ("signout",): _sign_out,
    ("account", "token-create"): _token_create,
    ("account", "token-revoke"): _token_revoke,
    ("account", "totp-start"): _totp_start,
    ("account", "totp-confirm"): _totp_confirm,
    ("account", "totp-disable"): _totp_disable,
    ("admin", "feed-create"): _admin_action("admin", _feed_create),
    ("admin", "feed-delete"): _admin_action("admin", _feed_delete),
    ("admin", "feed-private"): _admin_action("admin", _feed_private),
    ("admin", "connector-add"): _admin_action("feed", _connector_add),
    ("admin", "connector-remove"): _admin_action("feed", _connector_remove),
    ("admin", "member-set"): _admin_action("feed", _member_set),
    ("admin", "member-remove"): _admin_action("feed", _member_remove),
    ("admin", "user-add"): _admin_action("users", _user_add),
    ("admin", "user-delete"): _admin_action("users", _user_delete),
    ("admin", "user-password"): _admin_action("users", _user_password),
}
