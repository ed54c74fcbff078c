"""Account use cases behind npm's own commands: login (legacy and web), tokens, profile
and two-factor enrolment. Each method is what one npm request needs."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping
from typing import Any

from entrepot import totp
from entrepot.admin import check_user_name
from entrepot.auth import Authenticator, Principal, hash_password, hash_token
from entrepot.errors import BadRequest, Forbidden, NotFound, Unauthorized
from entrepot.storage.base import AlreadyExists, MetadataStore, Token, User

LOGIN_TTL = 10 * 60
TOKEN_PAGE = 100
RECOVERY_CODES = 5


@dataclasses.dataclass(frozen=True)
class WebLogin:
    """The two secret ids of a web sign-in: one for the browser, one for npm's polling."""

    login_id: str
    done_id: str


def token_json(token: Token) -> dict[str, Any]:
    """A token as npm's ``token list`` shows it: never the secret, only its first letters."""
    return {
        "key": token.key,
        "token": token.prefix,
        "name": token.description or None,
        "created": token.created,
        "updated": token.created,
        "readonly": token.read_only,
        "cidr_whitelist": list(token.cidrs) or None,
        "feeds": list(token.feeds),
        "expires": token.expires,
    }


class Accounts:
    """Sign-in, tokens and profile for npm's account commands."""

    def __init__(self, meta: MetadataStore, auth: Authenticator, *, allow_registration: bool):
        self.meta = meta
        self.auth = auth
        self.allow_registration = allow_registration

    async def _user(self, principal: Principal | None) -> User:
        if principal is None:
            raise Unauthorized("you must sign in first", scheme="Bearer")
        user = await self.meta.get_user_by_id(principal.user_id)
        if user is None:
            raise Unauthorized("your user no longer exists", scheme="Bearer")
        return user

    # -- legacy login (npm login --auth-type=legacy, npm adduser) ---------------------------

    async def legacy_login(
        self, name: str, body: Mapping[str, Any], client_ip: str | None, otp: str | None
    ) -> str:
        """Check the password (and second factor); a new token for the user."""
        password = body.get("password")
        if body.get("name", name) != name or not isinstance(password, str) or not password:
            raise BadRequest("the body must carry the user's name and password")
        user = await self.meta.get_user(name)
        if user is None and "email" in body:
            user = await self._register(name, body.get("email"), password)
        else:
            user = await self.auth.check_password(name, password, client_ip)
            await self.auth.check_second_factor(user, otp)
        secret, _ = await self.auth.issue_token(user, description="npm login")
        return secret

    async def _register(self, name: str, email: object, password: str) -> User:
        if not self.allow_registration:
            raise Forbidden(
                "creating accounts with npm adduser is turned off on this server: "
                "ask an administrator (entrepot user add)"
            )
        check_user_name(name)
        if not isinstance(email, str) or "@" not in email:
            raise BadRequest("a valid email is needed to create an account")
        if len(password) < 8:
            raise BadRequest("a password must be at least 8 characters long")
        try:
            return await self.meta.create_user(name, email, hash_password(password), admin=False)
        except AlreadyExists:
            raise Forbidden(f"the user name {name!r} is taken") from None

    # -- web login (npm login) ---------------------------------------------------------------

    async def start_web_login(self) -> WebLogin:
        login = WebLogin(secrets.token_urlsafe(24), secrets.token_urlsafe(24))
        await self.meta.create_login_session(
            hash_token(login.login_id), hash_token(login.done_id), time.time() + LOGIN_TTL
        )
        return login

    async def web_login_pending(self, login_id: str) -> bool:
        """Whether the sign-in page for this id should show a form."""
        session = await self.meta.find_login_session(hash_token(login_id))
        if session is None:
            raise NotFound("this sign-in link has expired or was already used")
        return session.user_id is None

    async def web_login_submit(
        self, login_id: str, name: str, password: str, otp: str | None, client_ip: str | None
    ) -> User:
        """The browser's sign-in: approves the session npm is polling."""
        await self.web_login_pending(login_id)
        user = await self.auth.check_password(name, password, client_ip)
        await self.auth.check_second_factor(user, otp)
        if not await self.meta.approve_login_session(hash_token(login_id), user.id):
            raise NotFound("this sign-in link has expired or was already used")
        return user

    async def poll_web_login(self, done_id: str) -> str | None:
        """npm's poll: a new token once signed in, None while waiting."""
        session = await self.meta.take_login_session(hash_token(done_id))
        if session is None:
            raise NotFound("this sign-in has expired: run npm login again")
        if session.user_id is None:
            return None
        user = await self.meta.get_user_by_id(session.user_id)
        if user is None:
            raise NotFound("the user who signed in no longer exists")
        secret, _ = await self.auth.issue_token(user, description="npm login (web)")
        return secret

    # -- tokens (npm token list/create/revoke, npm logout) ------------------------------------

    async def list_tokens(self, principal: Principal | None, page: int) -> tuple[list[Token], bool]:
        user = await self._user(principal)
        tokens = await self.meta.list_tokens(user.id)
        start = page * TOKEN_PAGE
        return tokens[start : start + TOKEN_PAGE], len(tokens) > start + TOKEN_PAGE

    async def create_token(
        self,
        principal: Principal | None,
        body: Mapping[str, Any],
        otp: str | None,
        client_ip: str | None,
    ) -> tuple[str, Token]:
        """``npm token create``: the password again, the second factor, then a token that is
        never broader than the one the request came with."""
        user = await self._user(principal)
        assert principal is not None
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise BadRequest("creating a token needs your password")
        await self.auth.check_password(user.name, password, client_ip)
        await self.auth.check_second_factor(user, otp)
        read_only = bool(body.get("readonly")) or (
            body.get("packages_and_scopes_permission") == "read-only"
        )
        cidrs = body.get("cidr_whitelist") or []
        expires = body.get("expires")
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            raise BadRequest("cidr_whitelist must be a list of address ranges")
        if expires is not None and (
            isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0
        ):
            raise BadRequest("expires must be a positive number of days")
        description = body.get("name") or body.get("description") or "npm token create"
        return await self.auth.issue_token(
            user,
            read_only=read_only or principal.read_only,
            feeds=principal.feeds,
            cidrs=cidrs,
            expires_days=float(expires) if expires is not None else None,
            description=str(description)[:200],
        )

    async def revoke_token(self, principal: Principal | None, key_or_secret: str) -> None:
        """Revoke one of the caller's tokens (admins: anyone's), by key or by the secret."""
        user = await self._user(principal)
        candidates = [t for t in await self.meta.list_tokens() if t.key == key_or_secret]
        if not candidates:
            found = await self.meta.find_token(hash_token(key_or_secret))
            candidates = [found] if found is not None and not found.revoked else []
        if not candidates:
            raise NotFound("no such token")
        token = candidates[0]
        if token.user_id != user.id and not user.admin:
            raise NotFound("no such token")
        await self.meta.revoke_token(token.key)

    # -- profile and second factor (npm profile get / enable-2fa / disable-2fa) ---------------

    async def profile(self, principal: Principal | None) -> dict[str, Any]:
        user = await self._user(principal)
        tfa: dict[str, Any] | bool = False
        if user.totp_secret:
            tfa = {"pending": False, "mode": "auth-and-writes"}
        elif user.totp_pending:
            tfa = {"pending": True, "mode": "auth-and-writes"}
        return {
            "name": user.name,
            "email": user.email,
            "email_verified": True,
            "created": user.created,
            "updated": user.created,
            "tfa": tfa,
            "fullname": "",
        }

    async def update_profile(
        self,
        principal: Principal | None,
        body: Mapping[str, Any],
        otp: str | None,
        client_ip: str | None,
        issuer: str,
    ) -> dict[str, Any]:
        user = await self._user(principal)
        tfa = body.get("tfa")
        if isinstance(tfa, list):
            return await self._confirm_totp(user, tfa)
        if isinstance(tfa, dict):
            password = tfa.get("password")
            if not isinstance(password, str):
                raise BadRequest("changing two-factor authentication needs your password")
            await self.auth.check_password(user.name, password, client_ip)
            if tfa.get("mode") == "disable":
                if user.totp_secret:
                    await self.auth.check_second_factor(user, otp)
                await self.meta.update_user(
                    user.id, {"totp_secret": None, "totp_pending": None, "recovery_hashes": []}
                )
                return {**await self.profile(principal), "tfa": False}
            if tfa.get("mode") not in ("auth-only", "auth-and-writes"):
                raise BadRequest("tfa.mode must be auth-only, auth-and-writes or disable")
            if user.totp_secret:
                return await self.profile(principal)
            secret = totp.new_secret()
            await self.meta.update_user(user.id, {"totp_pending": secret})
            return {"tfa": totp.provisioning_uri(secret, user.name, issuer)}
        raise BadRequest("only two-factor settings can be changed here")

    async def _confirm_totp(self, user: User, codes: list[Any]) -> dict[str, Any]:
        if not user.totp_pending:
            raise BadRequest("start with npm profile enable-2fa")
        code = str(codes[0]) if codes else ""
        step = totp.matching_step(user.totp_pending, code)
        if step is None:
            raise BadRequest("that code does not match: check the authenticator's clock")
        # The enrolment code counts as used: it cannot authorize a publish afterwards.
        await self.meta.use_totp_step(user.id, step)
        recovery = [secrets.token_hex(5) for _ in range(RECOVERY_CODES)]
        await self.meta.update_user(
            user.id,
            {
                "totp_secret": user.totp_pending,
                "totp_pending": None,
                "recovery_hashes": [hash_token(c) for c in recovery],
            },
        )
        return {"tfa": recovery}
