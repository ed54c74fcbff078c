"""HTTP handlers for npm's account commands: login (legacy and web), logout, tokens,
profile and two-factor enrolment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from entrepot.accounts import Accounts, token_json
from entrepot.auth import Principal
from entrepot.errors import NotFound, RegistryError, Unauthorized
from entrepot.http import pages
from entrepot.http.bodies import read_body, read_form, read_json
from entrepot.http.responses import json_response

USER_PREFIX = "org.couchdb.user:"

PrincipalOf = Callable[[Request], Awaitable[Principal | None]]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


class AccountRoutes:
    """Handlers under ``/npm/<feed>/-/`` for accounts, and the sign-in page."""

    def __init__(self, accounts: Accounts, principal_of: PrincipalOf, body_limit: int) -> None:
        self.accounts = accounts
        self.principal_of = principal_of
        self.body_limit = body_limit

    async def user(self, request: Request, rest: list[str]) -> Response:
        """``/-/user/...``: legacy login, user lookup, and ``npm logout``."""
        method = request.method
        if len(rest) == 2 and rest[0] == "token" and method == "DELETE":
            principal = await self.principal_of(request)
            await self.accounts.revoke_token(principal, rest[1])
            return json_response({"ok": True})
        if not rest or not rest[0].startswith(USER_PREFIX):
            raise NotFound("no such user endpoint")
        name = rest[0].removeprefix(USER_PREFIX)
        if method == "PUT" and (len(rest) == 1 or (len(rest) == 3 and rest[1] == "-rev")):
            body = await read_json(request, self.body_limit)
            otp = request.headers.get("npm-otp")
            secret = await self.accounts.legacy_login(name, body, client_ip(request), otp)
            return json_response(
                {"ok": True, "id": f"{USER_PREFIX}{name}", "rev": "1-0", "token": secret}, 201
            )
        if method == "GET" and len(rest) == 1:
            principal = await self.principal_of(request)
            user = await self.accounts.meta.get_user(name) if principal is not None else None
            if user is None:
                raise NotFound(f"no user named {name[:100]!r}")
            return json_response(
                {
                    "_id": f"{USER_PREFIX}{user.name}",
                    "name": user.name,
                    "email": user.email,
                    "type": "user",
                    "roles": [],
                }
            )
        raise NotFound("no such user endpoint")

    async def npm_v1(self, request: Request, rest: list[str], issuer: str) -> Response:
        """``/-/npm/v1/tokens...`` and ``/-/npm/v1/user``."""
        method = request.method
        principal = await self.principal_of(request)
        otp = request.headers.get("npm-otp")
        if rest == ["tokens"] and method == "GET":
            page = request.query_params.get("page", "0")
            number = int(page) if page.isascii() and page.isdigit() and len(page) < 6 else 0
            tokens, more = await self.accounts.list_tokens(principal, number)
            urls = {"next": f"{request.url.path}?page={number + 1}"} if more else {}
            return json_response(
                {"objects": [token_json(t) for t in tokens], "total": len(tokens), "urls": urls}
            )
        if rest == ["tokens"] and method == "POST":
            body = await read_json(request, self.body_limit)
            secret, token = await self.accounts.create_token(
                principal, body, otp, client_ip(request)
            )
            return json_response({**token_json(token), "token": secret})
        if len(rest) == 3 and rest[:2] == ["tokens", "token"] and method == "DELETE":
            await self.accounts.revoke_token(principal, rest[2])
            return Response(status_code=204)
        if rest == ["user"] and method == "GET":
            return json_response(await self.accounts.profile(principal))
        if rest == ["user"] and method == "POST":
            body = await read_json(request, self.body_limit)
            return json_response(
                await self.accounts.update_profile(principal, body, otp, client_ip(request), issuer)
            )
        raise NotFound(f"no such endpoint: /-/npm/v1/{'/'.join(rest)[:100]}")

    async def start_web_login(self, request: Request, origin: str, feed_base: str) -> Response:
        """``POST /-/v1/login``: where the user signs in, and where npm polls."""
        await read_body(request, self.body_limit)  # {} or {"create": true}: nothing to use
        login = await self.accounts.start_web_login()
        return json_response(
            {
                "loginUrl": f"{origin}/-/web/login/{login.login_id}",
                "doneUrl": f"{feed_base}-/v1/done/{login.done_id}",
            }
        )

    async def poll_web_login(self, done_id: str) -> Response:
        """npm's poll of ``doneUrl``: 202 + ``Retry-After`` until signed in, then the token."""
        secret = await self.accounts.poll_web_login(done_id)
        if secret is None:
            return json_response({}, 202, {"Retry-After": "1"})
        return json_response({"token": secret})

    async def web_login_page(self, request: Request, login_id: str) -> Response:
        """The sign-in page npm opens (GET shows the form; POST signs in)."""
        action = f"/-/web/login/{login_id}"
        try:
            if not await self.accounts.web_login_pending(login_id):
                return pages.login_gone()
        except NotFound:
            return pages.login_gone()
        if request.method == "GET":
            return pages.login_form(action)
        if request.method != "POST":
            raise NotFound("no such page")
        form = await read_form(request)
        name = form.get("name", "")
        try:
            user = await self.accounts.web_login_submit(
                login_id,
                name,
                form.get("password", ""),
                form.get("otp") or None,
                client_ip(request),
            )
        except Unauthorized as exc:
            message = (
                "Enter the one-time password from your authenticator."
                if exc.headers.get("WWW-Authenticate") == "OTP"
                else "Incorrect user name or password."
            )
            return pages.login_form(action, error=message, name=name, status=401)
        except RegistryError as exc:
            page = pages.login_form(action, error=exc.message, name=name, status=exc.status_code)
            page.headers.update(exc.headers)  # Retry-After on 429
            return page
        return pages.login_done(user.name)
