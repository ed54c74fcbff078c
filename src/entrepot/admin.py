"""Administrative use cases shared by the command line and (later) the admin API."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from entrepot.auth import Authenticator, hash_password
from entrepot.errors import BadRequest, NotFound
from entrepot.netguard import check_upstream
from entrepot.storage.base import (
    ROLES,
    AlreadyExists,
    Connector,
    Feed,
    MetadataStore,
    Missing,
    Token,
    User,
)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
CONNECTOR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FEED_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
USER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}$")
INITIAL_PASSWORD_FILE = "initial-admin-password"  # noqa: S105 (a file name)


def check_feed_name(name: str) -> str:
    if not FEED_NAME.match(name):
        raise BadRequest(
            f"invalid feed name {name[:80]!r}: use 1-64 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


def check_user_name(name: str) -> str:
    if not USER_NAME.match(name):
        raise BadRequest(
            f"invalid user name {name[:80]!r}: use 1-64 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        )
    return name


class Admin:
    """Feeds, users and tokens, as an administrator manages them."""

    def __init__(self, meta: MetadataStore, *, own_ports: set[int] | None = None) -> None:
        self.meta = meta
        #: This server's ports: a connector to one of them on loopback is the server itself.
        self.own_ports = own_ports or set()
        self.auth = Authenticator(meta, allow_password_auth=True)

    async def create_feed(self, name: str, *, private: bool) -> Feed:
        try:
            return await self.meta.create_feed(check_feed_name(name), private=private)
        except AlreadyExists:
            raise BadRequest(f"feed {name!r} already exists") from None

    async def delete_feed(self, name: str) -> None:
        try:
            await self.meta.delete_feed(name)
        except Missing:
            raise NotFound(f"no feed named {name!r}") from None

    async def feed(self, name: str) -> Feed:
        feed = await self.meta.get_feed(name)
        if feed is None:
            raise NotFound(f"no feed named {name!r}")
        return feed

    async def grant(self, feed_name: str, user_name: str, role: str) -> None:
        """Give a user a role on a feed (replacing the one they had)."""
        if role not in ROLES:
            raise BadRequest(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        feed, user = await self.feed(feed_name), await self.user(user_name)
        await self.meta.set_role(feed.id, user.id, role)

    async def revoke(self, feed_name: str, user_name: str) -> None:
        """Take away a user's role on a feed."""
        feed, user = await self.feed(feed_name), await self.user(user_name)
        if await self.meta.get_role(feed.id, user.id) is None:
            raise NotFound(f"{user_name} has no role on feed {feed_name}")
        await self.meta.set_role(feed.id, user.id, None)

    async def add_connector(
        self,
        feed_name: str,
        url: str,
        *,
        name: str | None = None,
        token_env: str | None = None,
        basic_env: str | None = None,
        allow: list[str] | None = None,
        block: list[str] | None = None,
        min_age_hours: float | None = None,
        ttl: int = 300,
        allow_internal: bool = False,
        own_ports: set[int] | None = None,
    ) -> Connector:
        """Append an upstream (``http(s)://...`` or ``feed:OTHER``) to a feed's connectors."""
        feed = await self.feed(feed_name)
        if url.startswith("feed:"):
            other = url.removeprefix("feed:")
            if other == feed.name:
                raise BadRequest("a feed cannot read through itself")
            await self.feed(other)
            default_name = f"feed-{other}"
        else:
            parsed = urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise BadRequest(f"a connector URL must be http(s)://... or feed:NAME, not {url!r}")
            if parsed.username or parsed.password:
                raise BadRequest(
                    "put upstream credentials in the environment or the config file "
                    "(--token-env / --basic-env), never in the URL"
                )
            default_name = parsed.hostname
            check_upstream(url, own_ports=own_ports or set(), allow_internal=allow_internal)
        if token_env and basic_env:
            raise BadRequest("choose one of --token-env and --basic-env")
        for env in (token_env, basic_env):
            if env is not None and not ENV_NAME.match(env):
                raise BadRequest(f"not an environment variable name: {env!r}")
        if min_age_hours is not None and min_age_hours < 0:
            raise BadRequest("--min-age must be zero or more hours")
        if ttl < 0:
            raise BadRequest("--ttl must be zero or more seconds")
        connector_name = name or default_name
        if not CONNECTOR_NAME.match(connector_name):
            raise BadRequest(f"invalid connector name {connector_name!r}")
        try:
            return await self.meta.add_connector(
                feed.id,
                name=connector_name,
                url=url.rstrip("/") if not url.startswith("feed:") else url,
                credential_kind="token" if token_env else ("basic" if basic_env else None),
                credential_env=token_env or basic_env,
                allow=allow or [],
                block=block or [],
                min_age_hours=min_age_hours or None,
                ttl=ttl,
                allow_internal=allow_internal,
            )
        except AlreadyExists:
            raise BadRequest(
                f"feed {feed_name} already has a connector named {connector_name!r} (--name)"
            ) from None

    async def remove_connector(self, feed_name: str, name: str) -> None:
        feed = await self.feed(feed_name)
        try:
            await self.meta.remove_connector(feed.id, name)
        except Missing:
            raise NotFound(f"feed {feed_name} has no connector named {name!r}") from None

    async def add_user(self, name: str, email: str, password: str | None, *, admin: bool) -> User:
        check_user_name(name)
        if not EMAIL.match(email):
            raise BadRequest(f"invalid email address {email[:80]!r}")
        if password is not None and len(password) < 8:
            raise BadRequest("a password must be at least 8 characters long")
        try:
            return await self.meta.create_user(
                name, email, hash_password(password) if password else None, admin=admin
            )
        except AlreadyExists:
            raise BadRequest(f"user {name!r} already exists") from None

    async def user(self, name: str) -> User:
        user = await self.meta.get_user(name)
        if user is None:
            raise NotFound(f"no user named {name!r}")
        return user

    async def create_token(
        self,
        user_name: str,
        *,
        read_only: bool,
        feeds: list[str],
        expires_days: float | None,
        cidrs: list[str] | None = None,
        description: str = "",
    ) -> tuple[str, Token]:
        user = await self.user(user_name)
        for feed in feeds:
            if await self.meta.get_feed(feed) is None:
                raise NotFound(f"no feed named {feed!r}")
        if expires_days is not None and expires_days <= 0:
            raise BadRequest("--expires-days must be more than 0")
        return await self.auth.issue_token(
            user,
            read_only=read_only,
            feeds=feeds,
            cidrs=cidrs or [],
            expires_days=expires_days,
            description=description,
        )

    async def revoke_token(self, key_or_secret: str) -> Token:
        """Revoke by key (as listed) or by the token itself."""
        for token in await self.meta.list_tokens():
            if token.key == key_or_secret:
                await self.meta.revoke_token(token.key)
                return token
        token_found = await self.auth.revoke_secret(key_or_secret)
        if token_found is None:
            raise NotFound("no live token with that key")
        return token_found

    async def bootstrap(self, data_dir: Path) -> Path | None:
        """On an empty store: the feed ``main`` and the user ``admin``, whose password is
        written to ``DATA/initial-admin-password`` (mode 0600). Returns that path, or None."""
        if await self.meta.list_feeds() or await self.meta.list_users():
            return None
        password = secrets.token_urlsafe(18)
        path = data_dir / INITIAL_PASSWORD_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        # Several servers may start at once on one shared database: the one whose user is
        # created wins and publishes its password file; the others leave it alone. Written
        # beforehand under a name of its own, so a crash never loses the password.
        pending = data_dir / f"{INITIAL_PASSWORD_FILE}.{os.getpid()}"
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")
        pending.chmod(0o600)
        try:
            await self.meta.create_user(
                "admin", "admin@localhost", hash_password(password), admin=True
            )
        except AlreadyExists:
            pending.unlink(missing_ok=True)
            return None
        pending.replace(path)
        with contextlib.suppress(AlreadyExists):
            await self.meta.create_feed("main", private=False)
        return path
