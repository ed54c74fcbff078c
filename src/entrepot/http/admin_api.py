"""The admin HTTP API: JSON under ``/-/api/...``, described by ``/-/api/openapi.json``.

:class:`Operations` holds what the API and the web UI can do, each call checked against the
caller (a :class:`Principal`, or None for anonymous); :class:`AdminApi` maps HTTP requests to
them through one route table, from which the OpenAPI document is generated, so the document
cannot drift from the routes. Scripts authenticate with ``Authorization: Bearer TOKEN``;
cookies are never read here (the web UI has its own CSRF-checked forms), so the API cannot be
driven cross-site.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from entrepot import totp
from entrepot.accounts import Accounts, token_json
from entrepot.admin import EMAIL, Admin
from entrepot.auth import Principal, hash_password
from entrepot.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from entrepot.http.bodies import read_json
from entrepot.http.responses import json_response
from entrepot.registry import Registry
from entrepot.storage.base import ROLES, Connector, Feed, MetadataStore, Missing, Token, User

#: What a token made by the web UI's sign-in says about itself (the session cookie holds it).
SESSION_DESCRIPTION = "web session"
PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
MAX_OFFSET = 1_000_000


def page_of(objects: list[dict[str, Any]], total: int, page: int, size: int) -> dict[str, Any]:
    return {"objects": objects, "total": total, "page": page, "size": size}


def package_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A search entry as the API lists it: no e-mail addresses."""
    publisher = entry.get("publisher") or {}
    return {
        "name": str(entry.get("name", "")),
        "version": str(entry.get("version", "")),
        "description": str(entry.get("description", "")),
        "keywords": [str(k) for k in entry.get("keywords") or []],
        "modified": str((entry.get("time") or {}).get("modified") or entry.get("date") or ""),
        "publisher": str(publisher.get("username", "")) if isinstance(publisher, dict) else "",
    }


def feed_json(feed: Feed, packages: int, registry: str) -> dict[str, Any]:
    return {
        "name": feed.name,
        "private": feed.private,
        "created": feed.created,
        "packages": packages,
        "registry": registry,
    }


def connector_json(c: Connector) -> dict[str, Any]:
    return {
        "name": c.name,
        "position": c.position,
        "url": c.url,
        "credential_kind": c.credential_kind,
        "credential_env": c.credential_env,
        "allow": list(c.allow),
        "block": list(c.block),
        "min_age_hours": c.min_age_hours,
        "ttl": c.ttl,
    }


def user_json(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "email": user.email,
        "admin": user.admin,
        "created": user.created,
        "has_password": user.password_hash is not None,
        "totp": bool(user.totp_secret),
    }


def api_token_json(token: Token) -> dict[str, Any]:
    return {**token_json(token), "user": token.user_name}


# -- reading bodies and parameters ----------------------------------------------------------


def text_field(body: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(f"{key!r} is required")
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a string")
    return value


def bool_field(body: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{key!r} must be true or false")
    return value


def number_field(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{key!r} must be a number")
    return float(value)


def list_field(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{key!r} must be a list of strings")
    return [v for v in value if v]


def int_param(query: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    value = query.get(key)
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 9 or not low <= int(value) <= high:
        raise BadRequest(f"{key!r} must be a whole number from {low} to {high}")
    return int(value)


# -- the operations -------------------------------------------------------------------------


class Operations:
    """Everything the admin API and the web UI do, checked against the caller."""

    def __init__(self, meta: MetadataStore, registry: Registry, accounts: Accounts) -> None:
        self.meta = meta
        self.registry = registry
        self.accounts = accounts
        self.admin = Admin(meta)

    # -- who may do what

    async def user_of(self, principal: Principal | None) -> User:
        if principal is None:
            raise Unauthorized("you must sign in first (a Bearer token)", scheme="Bearer")
        user = await self.meta.get_user_by_id(principal.user_id)
        if user is None:
            raise Unauthorized("your user no longer exists", scheme="Bearer")
        return user

    async def require_admin(self, principal: Principal | None) -> User:
        user = await self.user_of(principal)
        assert principal is not None
        if not user.admin:
            raise Forbidden("only server administrators may do this")
        if principal.read_only or principal.feeds:
            raise Forbidden("administration needs a token that is neither read-only nor limited")
        return user

    async def readable_feed(self, name: str, principal: Principal | None) -> Feed:
        return await self.registry.feed(name, principal)

    # -- feeds and packages

    async def package_count(self, feed: Feed) -> int:
        return (await self.meta.newest_packages(feed.id, size=0, offset=0))[1]

    async def feeds(self, principal: Principal | None) -> list[tuple[Feed, int]]:
        """The feeds the caller may read, with their package counts."""
        feeds = [
            f for f in await self.meta.list_feeds() if await self.registry.role(f, principal) > 0
        ]
        return [(f, await self.package_count(f)) for f in feeds]

    async def create_feed(self, principal: Principal | None, body: Mapping[str, Any]) -> Feed:
        await self.require_admin(principal)
        name = text_field(body, "name", required=True)
        assert name is not None
        private = bool_field(body, "private")
        if await self.meta.get_feed(name) is not None:
            raise Conflict(f"feed {name!r} already exists")
        return await self.admin.create_feed(name, private=private)

    async def update_feed(
        self, principal: Principal | None, name: str, body: Mapping[str, Any]
    ) -> Feed:
        await self.require_admin(principal)
        if "private" not in body:
            raise BadRequest("nothing to change: send {'private': true|false}")
        try:
            return await self.meta.set_feed_private(name, bool_field(body, "private"))
        except Missing:
            raise NotFound(f"no feed named {name!r}") from None

    async def delete_feed(self, principal: Principal | None, name: str) -> None:
        await self.require_admin(principal)
        await self.admin.delete_feed(name)

    async def packages(
        self, principal: Principal | None, name: str, page: int, size: int
    ) -> tuple[Feed, list[dict[str, Any]], int]:
        """One page of the feed's local packages, newest first."""
        feed = await self.readable_feed(name, principal)
        offset = min((page - 1) * size, MAX_OFFSET)
        entries, total = await self.meta.newest_packages(feed.id, size=size, offset=offset)
        return feed, entries, total

    async def search(
        self, principal: Principal | None, name: str, text: str, page: int, size: int
    ) -> tuple[Feed, list[dict[str, Any]], int]:
        feed = await self.readable_feed(name, principal)
        offset = min((page - 1) * size, MAX_OFFSET)
        entries, total = await self.meta.search(feed.id, text[:200], size=size, offset=offset)
        return feed, entries, total

    # -- connectors

    async def connectors(self, principal: Principal | None, feed_name: str) -> list[Connector]:
        await self.require_admin(principal)
        feed = await self.admin.feed(feed_name)
        return await self.meta.list_connectors(feed.id)

    async def add_connector(
        self, principal: Principal | None, feed_name: str, body: Mapping[str, Any]
    ) -> Connector:
        await self.require_admin(principal)
        url = text_field(body, "url", required=True)
        assert url is not None
        ttl = number_field(body, "ttl")
        if ttl is not None and ttl != int(ttl):
            raise BadRequest("'ttl' must be a whole number of seconds")
        return await self.admin.add_connector(
            feed_name,
            url,
            name=text_field(body, "name") or None,
            token_env=text_field(body, "token_env") or None,
            basic_env=text_field(body, "basic_env") or None,
            allow=list_field(body, "allow"),
            block=list_field(body, "block"),
            min_age_hours=number_field(body, "min_age_hours"),
            ttl=300 if ttl is None else int(ttl),
        )

    async def remove_connector(self, principal: Principal | None, feed: str, name: str) -> None:
        await self.require_admin(principal)
        await self.admin.remove_connector(feed, name)

    # -- members (roles on a feed)

    async def members(self, principal: Principal | None, feed_name: str) -> list[tuple[str, str]]:
        await self.require_admin(principal)
        feed = await self.admin.feed(feed_name)
        return await self.meta.list_roles(feed.id)

    async def member(self, principal: Principal | None, feed_name: str, user_name: str) -> str:
        await self.require_admin(principal)
        feed, user = await self.admin.feed(feed_name), await self.admin.user(user_name)
        role = await self.meta.get_role(feed.id, user.id)
        if role is None:
            raise NotFound(f"{user_name} has no role on feed {feed_name}")
        return role

    async def set_member(
        self, principal: Principal | None, feed: str, user: str, body: Mapping[str, Any]
    ) -> str:
        await self.require_admin(principal)
        role = text_field(body, "role", required=True)
        assert role is not None
        await self.admin.grant(feed, user, role)
        return role

    async def remove_member(self, principal: Principal | None, feed: str, user: str) -> None:
        await self.require_admin(principal)
        await self.admin.revoke(feed, user)

    # -- users

    async def users(self, principal: Principal | None) -> list[User]:
        await self.require_admin(principal)
        return await self.meta.list_users()

    async def user(self, principal: Principal | None, name: str) -> User:
        await self.require_admin(principal)
        return await self.admin.user(name)

    async def add_user(self, principal: Principal | None, body: Mapping[str, Any]) -> User:
        await self.require_admin(principal)
        name = text_field(body, "name", required=True)
        email = text_field(body, "email", required=True)
        assert name is not None and email is not None
        password = text_field(body, "password") or None
        admin = bool_field(body, "admin")
        if await self.meta.get_user(name) is not None:
            raise Conflict(f"user {name!r} already exists")
        return await self.admin.add_user(name, email, password, admin=admin)

    async def update_user(
        self, principal: Principal | None, name: str, body: Mapping[str, Any]
    ) -> User:
        """Reset the password, change the e-mail address or the admin flag."""
        me = await self.require_admin(principal)
        user = await self.admin.user(name)
        password, email = text_field(body, "password"), text_field(body, "email")
        fields: dict[str, Any] = {}
        if password is not None:
            if len(password) < 8:
                raise BadRequest("a password must be at least 8 characters long")
            fields["password_hash"] = hash_password(password)
        if email is not None:
            if not EMAIL.match(email):
                raise BadRequest(f"invalid email address {email[:80]!r}")
            fields["email"] = email
        if "admin" in body:
            admin = bool_field(body, "admin")
            if not admin and user.id == me.id:
                raise BadRequest("you cannot take away your own admin rights")
            fields["admin"] = admin
        if not fields:
            raise BadRequest("nothing to change: send password, email or admin")
        return await self.meta.update_user(user.id, fields)

    async def delete_user(self, principal: Principal | None, name: str) -> None:
        me = await self.require_admin(principal)
        user = await self.admin.user(name)
        if user.id == me.id:
            raise BadRequest("you cannot delete your own account")
        try:
            await self.meta.delete_user(user.name)
        except Missing:
            raise NotFound(f"no user named {name!r}") from None

    # -- the caller's own account: tokens and second factor

    async def tokens(self, principal: Principal | None) -> list[Token]:
        user = await self.user_of(principal)
        return await self.meta.list_tokens(user.id)

    async def create_token(
        self, principal: Principal | None, body: Mapping[str, Any]
    ) -> tuple[str, Token]:
        """A new token for the caller, never broader than the credential the call came with."""
        user = await self.user_of(principal)
        assert principal is not None
        feeds = list_field(body, "feeds")
        if principal.feeds:
            outside = [f for f in feeds if f not in principal.feeds]
            if outside:
                raise Forbidden(f"this token may not reach feeds {outside}")
            feeds = feeds or list(principal.feeds)
        for feed in feeds:
            if await self.meta.get_feed(feed) is None:
                raise NotFound(f"no feed named {feed!r}")
        expires = number_field(body, "expires_days")
        if expires is not None and not 0 < expires <= 3650:
            raise BadRequest("'expires_days' must be more than 0 and at most 3650")
        description = (text_field(body, "description") or "").strip()[:200] or "created on the web"
        return await self.accounts.auth.issue_token(
            user,
            read_only=bool_field(body, "readonly") or principal.read_only,
            feeds=feeds,
            cidrs=list_field(body, "cidr_whitelist"),
            expires_days=expires,
            description=description,
        )

    async def revoke_token(self, principal: Principal | None, key: str) -> None:
        await self.accounts.revoke_token(principal, key)

    async def start_totp(
        self, principal: Principal | None, password: str, client_ip: str | None, issuer: str
    ) -> tuple[str, str]:
        """Enrolment, step one: (otpauth URI, secret) for the authenticator app."""
        user = await self.user_of(principal)
        if user.totp_secret:
            raise BadRequest("two-factor authentication is already on: turn it off first")
        answer = await self.accounts.update_profile(
            principal, {"tfa": {"password": password, "mode": "auth-and-writes"}}, None,
            client_ip, issuer,
        )  # fmt: skip
        pending = await self.user_of(principal)
        assert pending.totp_pending is not None
        return str(answer["tfa"]), pending.totp_pending

    async def confirm_totp(self, principal: Principal | None, code: str) -> list[str]:
        """Enrolment, step two: a code from the app turns it on; the recovery codes."""
        answer = await self.accounts.update_profile(principal, {"tfa": [code]}, None, None, "")
        return [str(c) for c in answer["tfa"]]

    async def disable_totp(
        self, principal: Principal | None, password: str, otp: str | None, client_ip: str | None
    ) -> None:
        user = await self.user_of(principal)
        if not user.totp_secret and not user.totp_pending:
            raise BadRequest("two-factor authentication is not on")
        body = {"tfa": {"password": password, "mode": "disable"}}
        await self.accounts.update_profile(principal, body, otp, client_ip, "")


# -- the HTTP side --------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """One API request, parsed: who, which path parameters, which query parameters."""

    request: Request
    principal: Principal | None
    params: dict[str, str]
    query: dict[str, str]
    body_limit: int

    async def body(self) -> dict[str, Any]:
        return await read_json(self.request, self.body_limit)

    @property
    def client_ip(self) -> str | None:
        return self.request.client.host if self.request.client else None


Handler = Callable[["AdminApi", Call], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class Route:
    """One operation: where it is, what it takes and gives (JSON Schema), who may call it."""

    method: str
    path: str
    handler: Handler
    summary: str
    access: str  # "anyone", "reader" (anyone who may read the feed), "user", "admin"
    response: str | None  # a schema name under components, or None for {"ok": true}
    status: int = 200
    body: str | None = None
    query: tuple[tuple[str, str, str], ...] = ()  # (name, JSON type, description)

    @property
    def parts(self) -> list[str]:
        return self.path.strip("/").split("/")


PAGE_QUERY = (
    ("page", "integer", "page number, from 1"),
    ("size", "integer", f"entries per page, 1 to {MAX_PAGE_SIZE} (default {PAGE_SIZE})"),
)


def _page(call: Call) -> tuple[int, int]:
    page = int_param(call.query, "page", 1, 1, 100_000)
    return page, int_param(call.query, "size", PAGE_SIZE, 1, MAX_PAGE_SIZE)


class AdminApi:
    """``/-/api/...``: routing, rendering, and the OpenAPI document."""

    def __init__(
        self,
        ops: Operations,
        principal_of: Callable[[Request], Awaitable[Principal | None]],
        origin_of: Callable[[Request], str],
        body_limit: int,
    ) -> None:
        self.ops = ops
        self.principal_of = principal_of
        self.origin_of = origin_of
        self.body_limit = body_limit

    async def route(self, request: Request, rest: list[str]) -> Response:
        rest = rest[:-1] if len(rest) > 1 and rest[-1] == "" else rest
        allowed: list[str] = []
        for route in ROUTES:
            params = _match(route.parts, rest)
            if params is None:
                continue
            if route.method != request.method and not (
                route.method == "GET" and request.method == "HEAD"
            ):
                allowed.append(route.method)
                continue
            query = {k: v[0] for k, v in parse_qs(request.url.query).items()}
            principal = await self.principal_of(request)
            call = Call(request, principal, params, query, self.body_limit)
            result = await route.handler(self, call)
            if route.response is None:
                result = {"ok": True}
            return _json(result, route.status)
        if allowed:
            return _json(
                {"error": f"use {' or '.join(allowed)} on this path"},
                405,
                {"Allow": ", ".join(allowed)},
            )
        raise NotFound(f"no such API endpoint: /-/api/{'/'.join(rest)[:200]}")

    def feed_base(self, call: Call, feed: str) -> str:
        return f"{self.origin_of(call.request)}/npm/{feed}/"

    # -- handlers: parse, call one operation, shape the answer

    async def openapi(self, call: Call) -> Any:
        return openapi_document()

    async def me(self, call: Call) -> Any:
        user = await self.ops.user_of(call.principal)
        assert call.principal is not None
        return {
            **user_json(user),
            "read_only": call.principal.read_only,
            "feeds": list(call.principal.feeds),
        }

    async def list_feeds(self, call: Call) -> Any:
        feeds = await self.ops.feeds(call.principal)
        return [feed_json(f, n, self.feed_base(call, f.name)) for f, n in feeds]

    async def get_feed(self, call: Call) -> Any:
        feed = await self.ops.readable_feed(call.params["feed"], call.principal)
        count = await self.ops.package_count(feed)
        return feed_json(feed, count, self.feed_base(call, feed.name))

    async def create_feed(self, call: Call) -> Any:
        feed = await self.ops.create_feed(call.principal, await call.body())
        return feed_json(feed, 0, self.feed_base(call, feed.name))

    async def update_feed(self, call: Call) -> Any:
        feed = await self.ops.update_feed(call.principal, call.params["feed"], await call.body())
        count = await self.ops.package_count(feed)
        return feed_json(feed, count, self.feed_base(call, feed.name))

    async def delete_feed(self, call: Call) -> Any:
        await self.ops.delete_feed(call.principal, call.params["feed"])

    async def packages(self, call: Call) -> Any:
        page, size = _page(call)
        _, entries, total = await self.ops.packages(call.principal, call.params["feed"], page, size)
        return page_of([package_json(e) for e in entries], total, page, size)

    async def search(self, call: Call) -> Any:
        page, size = _page(call)
        feed = call.query.get("feed", "main")
        _, entries, total = await self.ops.search(
            call.principal, feed, call.query.get("q", ""), page, size
        )
        return page_of([package_json(e) for e in entries], total, page, size)

    async def list_connectors(self, call: Call) -> Any:
        return [connector_json(c) for c in await self.ops.connectors(call.principal, _f(call))]

    async def add_connector(self, call: Call) -> Any:
        body = await call.body()
        return connector_json(await self.ops.add_connector(call.principal, _f(call), body))

    async def remove_connector(self, call: Call) -> Any:
        await self.ops.remove_connector(call.principal, _f(call), call.params["name"])

    async def list_members(self, call: Call) -> Any:
        members = await self.ops.members(call.principal, _f(call))
        return [{"user": user, "role": role} for user, role in members]

    async def get_member(self, call: Call) -> Any:
        user = call.params["user"]
        return {"user": user, "role": await self.ops.member(call.principal, _f(call), user)}

    async def put_member(self, call: Call) -> Any:
        user, body = call.params["user"], await call.body()
        return {
            "user": user,
            "role": await self.ops.set_member(call.principal, _f(call), user, body),
        }

    async def delete_member(self, call: Call) -> Any:
        await self.ops.remove_member(call.principal, _f(call), call.params["user"])

    async def list_users(self, call: Call) -> Any:
        return [user_json(u) for u in await self.ops.users(call.principal)]

    async def create_user(self, call: Call) -> Any:
        return user_json(await self.ops.add_user(call.principal, await call.body()))

    async def get_user(self, call: Call) -> Any:
        return user_json(await self.ops.user(call.principal, call.params["user"]))

    async def update_user(self, call: Call) -> Any:
        body = await call.body()
        return user_json(await self.ops.update_user(call.principal, call.params["user"], body))

    async def delete_user(self, call: Call) -> Any:
        await self.ops.delete_user(call.principal, call.params["user"])

    async def list_tokens(self, call: Call) -> Any:
        return [api_token_json(t) for t in await self.ops.tokens(call.principal)]

    async def create_token(self, call: Call) -> Any:
        secret, token = await self.ops.create_token(call.principal, await call.body())
        return {**api_token_json(token), "token": secret}

    async def revoke_token(self, call: Call) -> Any:
        await self.ops.revoke_token(call.principal, call.params["key"])

    async def start_totp(self, call: Call) -> Any:
        password = text_field(await call.body(), "password", required=True) or ""
        issuer = f"Entrepot ({self.origin_of(call.request).split('://', 1)[1]})"
        uri, secret = await self.ops.start_totp(call.principal, password, call.client_ip, issuer)
        return {"uri": uri, "secret": secret, "digits": totp.DIGITS, "period": totp.STEP}

    async def confirm_totp(self, call: Call) -> Any:
        code = text_field(await call.body(), "code", required=True) or ""
        return {"recovery_codes": await self.ops.confirm_totp(call.principal, code)}

    async def disable_totp(self, call: Call) -> Any:
        body = await call.body()
        password = text_field(body, "password", required=True) or ""
        otp = text_field(body, "otp")
        await self.ops.disable_totp(call.principal, password, otp, call.client_ip)


def _f(call: Call) -> str:
    return call.params["feed"]


def _match(parts: list[str], rest: list[str]) -> dict[str, str] | None:
    if len(parts) != len(rest):
        return None
    params: dict[str, str] = {}
    for part, segment in zip(parts, rest, strict=True):
        if part.startswith("{"):
            if not segment:
                return None
            params[part[1:-1]] = segment
        elif part != segment:
            return None
    return params


def _json(data: Any, status: int, headers: Mapping[str, str] | None = None) -> Response:
    response = json_response(data, status, headers)
    response.headers["Cache-Control"] = "no-store"
    return response


A = AdminApi
ROUTES: tuple[Route, ...] = (
    Route("GET", "openapi.json", A.openapi, "This document", "anyone", "OpenApi"),
    Route("GET", "me", A.me, "Who the token belongs to", "user", "Me"),
    Route("GET", "feeds", A.list_feeds, "Feeds the caller may read", "anyone", "FeedList"),
    Route("POST", "feeds", A.create_feed, "Create a feed", "admin", "Feed", 201, "FeedCreate"),
    Route("GET", "feeds/{feed}", A.get_feed, "One feed", "reader", "Feed"),
    Route("PATCH", "feeds/{feed}", A.update_feed, "Make a feed private or public", "admin",
          "Feed", 200, "FeedUpdate"),
    Route("DELETE", "feeds/{feed}", A.delete_feed, "Delete a feed and its packages", "admin",
          None),
    Route("GET", "feeds/{feed}/packages", A.packages, "Local packages, newest first", "reader",
          "PackagePage", query=PAGE_QUERY),
    Route("GET", "search", A.search, "Search a feed (the /-/v1/search index)", "reader",
          "PackagePage", query=(("feed", "string", "the feed (default main)"),
                                ("q", "string", "words to look for"), *PAGE_QUERY)),
    Route("GET", "feeds/{feed}/connectors", A.list_connectors, "Connectors, in order", "admin",
          "ConnectorList"),
    Route("POST", "feeds/{feed}/connectors", A.add_connector, "Append a connector", "admin",
          "Connector", 201, "ConnectorCreate"),
    Route("DELETE", "feeds/{feed}/connectors/{name}", A.remove_connector,
          "Remove a connector and its cache", "admin", None),
    Route("GET", "feeds/{feed}/members", A.list_members, "Users with a role on the feed",
          "admin", "MemberList"),
    Route("GET", "feeds/{feed}/members/{user}", A.get_member, "A user's role", "admin",
          "Member"),
    Route("PUT", "feeds/{feed}/members/{user}", A.put_member, "Grant a role (replaces any)",
          "admin", "Member", 200, "MemberUpdate"),
    Route("DELETE", "feeds/{feed}/members/{user}", A.delete_member, "Take a role away", "admin",
          None),
    Route("GET", "users", A.list_users, "All users", "admin", "UserList"),
    Route("POST", "users", A.create_user, "Add a user", "admin", "User", 201, "UserCreate"),
    Route("GET", "users/{user}", A.get_user, "One user", "admin", "User"),
    Route("PATCH", "users/{user}", A.update_user, "Reset the password, e-mail or admin flag",
          "admin", "User", 200, "UserUpdate"),
    Route("DELETE", "users/{user}", A.delete_user, "Delete a user, their tokens and roles",
          "admin", None),
    Route("GET", "tokens", A.list_tokens, "The caller's live tokens", "user", "TokenList"),
    Route("POST", "tokens", A.create_token, "Create a token (the secret is shown once)", "user",
          "NewToken", 201, "TokenCreate"),
    Route("DELETE", "tokens/{key}", A.revoke_token, "Revoke a token (admins: anyone's)", "user",
          None),
    Route("POST", "me/totp", A.start_totp, "Start enrolling an authenticator app", "user",
          "TotpStart", 200, "Password"),
    Route("POST", "me/totp/confirm", A.confirm_totp, "Finish enrolment with a code", "user",
          "RecoveryCodes", 200, "TotpConfirm"),
    Route("POST", "me/totp/disable", A.disable_totp, "Turn the second factor off", "user",
          None, 200, "TotpDisable"),
)  # fmt: skip


# -- the OpenAPI document -------------------------------------------------------------------


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


_S: dict[str, Any] = {"type": "string"}
_B: dict[str, Any] = {"type": "boolean"}
_I: dict[str, Any] = {"type": "integer"}
_STRINGS: dict[str, Any] = {"type": "array", "items": _S}
_NULLABLE_S: dict[str, Any] = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


_FEED = _obj(
    {"name": _S, "private": _B, "created": _S, "packages": _I, "registry": _S},
    ("name", "private", "created", "packages", "registry"),
)
_PACKAGE = _obj(
    {
        "name": _S,
        "version": _S,
        "description": _S,
        "keywords": _STRINGS,
        "modified": _S,
        "publisher": _S,
    },
    ("name", "version", "description", "keywords", "modified", "publisher"),
)
_USER_PROPS: dict[str, Any] = {
    "name": _S,
    "email": _S,
    "admin": _B,
    "created": _S,
    "has_password": _B,
    "totp": _B,
}
_TOKEN_PROPS: dict[str, Any] = {
    "key": _S,
    "token": {**_S, "description": "the first letters of the secret, to tell tokens apart"},
    "name": _NULLABLE_S,
    "user": _S,
    "created": _S,
    "updated": _S,
    "readonly": _B,
    "cidr_whitelist": {"type": ["array", "null"], "items": _S},
    "feeds": _STRINGS,
    "expires": {"type": ["number", "null"]},
}
_FEED_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}
_USER_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"}
_EMAIL = {"type": "string", "pattern": r"^[^@\s]{1,64}@[^@\s]{1,255}$"}
#: Path parameters, as the server accepts them (other text is a 400 or 404).
PATH_PARAMETERS: dict[str, Any] = {
    "feed": _FEED_NAME,
    "user": _USER_NAME,
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
    "key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,200}$"},
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _S}, ("error",)),
    "Ok": _obj({"ok": {"const": True}}, ("ok",)),
    "OpenApi": {"type": "object"},
    "Me": _obj(
        {**_USER_PROPS, "read_only": _B, "feeds": _STRINGS},
        ("name", "email", "admin", "read_only", "feeds"),
    ),
    "Feed": _FEED,
    "FeedList": _array("Feed"),
    "FeedCreate": _obj({"name": _FEED_NAME, "private": _B}, ("name",)),
    "FeedUpdate": _obj({"private": _B}, ("private",)),
    "Package": _PACKAGE,
    "PackagePage": _obj(
        {"objects": _array("Package"), "total": _I, "page": _I, "size": _I},
        ("objects", "total", "page", "size"),
    ),
    "Connector": _obj(
        {
            "name": _S,
            "position": _I,
            "url": _S,
            "credential_kind": {"type": ["string", "null"], "enum": ["token", "basic", None]},
            "credential_env": _NULLABLE_S,
            "allow": _STRINGS,
            "block": _STRINGS,
            "min_age_hours": {"type": ["number", "null"]},
            "ttl": _I,
        },
        ("name", "position", "url", "allow", "block", "ttl"),
    ),
    "ConnectorList": _array("Connector"),
    "ConnectorCreate": _obj(
        {
            "url": {**_S, "description": "http(s)://... or feed:OTHER"},
            "name": _S,
            "token_env": {**_S, "description": "environment variable holding a Bearer token"},
            "basic_env": {**_S, "description": "environment variable holding user:password"},
            "allow": _STRINGS,
            "block": _STRINGS,
            "min_age_hours": {"type": "number", "minimum": 0},
            "ttl": {"type": "integer", "minimum": 0},
        },
        ("url",),
    ),
    "Member": _obj({"user": _S, "role": {"enum": list(ROLES)}}, ("user", "role")),
    "MemberList": _array("Member"),
    "MemberUpdate": _obj({"role": {"enum": list(ROLES)}}, ("role",)),
    "User": _obj(_USER_PROPS, tuple(_USER_PROPS)),
    "UserList": _array("User"),
    "UserCreate": _obj(
        {"name": _USER_NAME, "email": _EMAIL, "password": {**_S, "minLength": 8}, "admin": _B},
        ("name", "email"),
    ),
    "UserUpdate": _obj({"password": {**_S, "minLength": 8}, "email": _EMAIL, "admin": _B}),
    "Token": _obj(_TOKEN_PROPS, ("key", "token", "user", "created", "readonly", "feeds")),
    "TokenList": _array("Token"),
    "NewToken": _obj(
        {**_TOKEN_PROPS, "token": {**_S, "description": "the secret: shown this once"}},
        ("key", "token", "user", "created", "readonly", "feeds"),
    ),
    "TokenCreate": _obj(
        {
            "description": _S,
            "readonly": _B,
            "feeds": {**_STRINGS, "description": "limit the token to these feeds"},
            "expires_days": {"type": "number", "exclusiveMinimum": 0, "maximum": 3650},
            "cidr_whitelist": _STRINGS,
        }
    ),
    "Password": _obj({"password": _S}, ("password",)),
    "TotpStart": _obj(
        {"uri": _S, "secret": _S, "digits": _I, "period": _I},
        ("uri", "secret", "digits", "period"),
    ),
    "TotpConfirm": _obj({"code": _S}, ("code",)),
    "TotpDisable": _obj({"password": _S, "otp": _S}, ("password",)),
    "RecoveryCodes": _obj({"recovery_codes": _STRINGS}, ("recovery_codes",)),
}

_ERRORS = {
    "anyone": {"400": "Bad input"},
    "reader": {"400": "Bad input", "401": "Private feed: sign in", "404": "No such feed"},
    "user": {
        "400": "Bad input",
        "401": "No or bad token",
        "403": "Not allowed",
        "404": "Not found",
    },
    "admin": {
        "400": "Bad input",
        "401": "No or bad token",
        "403": "Not an administrator (or a read-only or feed-limited token)",
        "404": "Not found",
    },
}


def _operation(route: Route) -> dict[str, Any]:
    schema = _ref(route.response) if route.response else _ref("Ok")
    responses: dict[str, Any] = {
        str(route.status): {
            "description": "OK" if route.status == 200 else "Created",
            "content": {"application/json": {"schema": schema}},
        }
    }
    error = {"content": {"application/json": {"schema": _ref("Error")}}}
    for status, text in _ERRORS[route.access].items():
        responses[status] = {"description": text, **error}
    if route.body:
        responses["413"] = {"description": "Body too large", **error}
    responses["default"] = {"description": "An error", **error}
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "responses": responses,
    }
    if route.access == "anyone" or route.access == "reader":
        op["security"] = [{}, {"bearer": []}]
    params = [
        {"name": p[1:-1], "in": "path", "required": True, "schema": PATH_PARAMETERS[p[1:-1]]}
        for p in route.parts
        if p.startswith("{")
    ]
    params += [
        {"name": name, "in": "query", "required": False, "schema": {"type": kind},
         "description": text}
        for name, kind, text in route.query
    ]  # fmt: skip
    for param in params:
        if param["name"] == "feed" and param["in"] == "query":
            param["schema"] = _FEED_NAME
        if param["name"] in ("page", "size"):
            high = MAX_PAGE_SIZE if param["name"] == "size" else 100_000
            param["schema"] = {"type": "integer", "minimum": 1, "maximum": high}
    if params:
        op["parameters"] = params
    if route.body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    return op


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of :data:`ROUTES`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(f"/-/api/{route.path}", {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Entrepot admin API",
            "version": "1",
            "description": (
                "Feeds, connectors, members, users and tokens of an Entrepot server. "
                "Send `Authorization: Bearer TOKEN` (a token from `entrepot token create` "
                'or the web UI). Errors are `{"error": "..."}`.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
