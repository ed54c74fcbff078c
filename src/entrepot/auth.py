"""Who is calling: tokens, passwords, and every way clients send them.

One secret kind, the token, accepted as ``Bearer T`` (npm ``_authToken``, UPM ``token``) and
as Basic with ``user:T``, ``api:T`` or ``email:T`` (npm ``_auth``, ``username`` +
``_password``, UPM ``_auth``); the token decides who the caller is. A user's password is
accepted as Basic too unless the settings refuse it. Tokens are stored as a SHA-256 of the
secret (they are long random strings, so a slow hash adds nothing); passwords with Argon2.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import ipaddress
import secrets
import time
import uuid
from collections.abc import Sequence

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from entrepot import totp
from entrepot.errors import BadRequest, TooManyRequests, Unauthorized
from entrepot.ratelimit import FailureLimiter
from entrepot.storage.base import MetadataStore, Token, User

TOKEN_PREFIX = "ent_"  # noqa: S105 (a prefix that secret scanners can match)
_hasher = PasswordHasher()


# Verifying against this keeps a sign-in for an unknown user as slow as for a known one.
@functools.cache
def _dummy_hash() -> str:
    """Made on first use (not at import: every CLI command would pay for it)."""
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclasses.dataclass(frozen=True)
class Principal:
    """A signed-in caller, narrowed by the token it used (if any)."""

    user_id: int
    name: str
    email: str
    admin: bool
    read_only: bool = False
    feeds: tuple[str, ...] = ()
    token_key: str | None = None
    #: When the token it signed in with expires (seconds since the epoch), if it does.
    expires: float | None = None

    def may_use_feed(self, feed: str) -> bool:
        return not self.feeds or feed in self.feeds


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant-time check; also spends the time when there is no hash to check against."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_authorization(header: str) -> tuple[str, str, str] | None:
    """``(scheme, user, secret)`` from an Authorization header; user is "" for Bearer.

    Raises :class:`Unauthorized` for a header that is present but unreadable.
    """
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    match scheme.lower():
        case "bearer" | "token":
            if not value:
                raise Unauthorized("the Bearer token is empty", scheme="Bearer")
            return ("bearer", "", value)
        case "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):  # binascii.Error; non-ASCII input
                raise Unauthorized(
                    "the Basic credentials are not valid base64 of user:secret"
                ) from None
            user, sep, secret = decoded.partition(":")
            if not sep or not secret:
                raise Unauthorized("the Basic credentials are not of the form user:secret")
            return ("basic", user, secret)
    raise Unauthorized(f"unsupported authorization scheme {scheme[:20]!r}")


class Authenticator:
    """Turns credentials into a :class:`Principal`, with a cache that any write resets
    (so a revoked token is refused at once, by every process that shares the store)."""

    def __init__(self, meta: MetadataStore, *, allow_password_auth: bool) -> None:
        self._meta = meta
        self._allow_password = allow_password_auth
        self._cache: dict[str, Principal] = {}
        self._tokens: dict[str, tuple[Token, Principal, tuple[str, str]]] = {}
        self._cache_seq = -1
        self.limiter = FailureLimiter()

    async def authenticate(self, header: str | None, client_ip: str | None) -> Principal | None:
        """None for an anonymous request; :class:`Unauthorized` for bad credentials."""
        if not header:
            return None
        parsed = parse_authorization(header)
        assert parsed is not None
        scheme, user, secret = parsed
        seq = await self._meta.seq(fresh=True)  # a revocation holds at once, everywhere
        if seq != self._cache_seq:
            self._cache.clear()
            self._tokens.clear()
            self._cache_seq = seq
        if scheme == "bearer" or secret.startswith(TOKEN_PREFIX):
            return await self._by_token(secret, user if scheme == "basic" else None, client_ip)
        return await self._by_password(user, secret, client_ip)

    async def _by_token(self, secret: str, user: str | None, client_ip: str | None) -> Principal:
        digest = hash_token(secret)
        scheme = "Basic" if user is not None else "Bearer"
        cached = self._tokens.get(digest)
        if cached is None:
            token = await self._meta.find_token(digest)
            if token is None or token.revoked:
                raise Unauthorized("the token is not valid (unknown or revoked)", scheme=scheme)
            owner = await self._meta.get_user_by_id(token.user_id)
            if owner is None:
                raise Unauthorized("the token's user no longer exists", scheme=scheme)
            principal = Principal(
                user_id=owner.id,
                name=owner.name,
                email=owner.email,
                admin=owner.admin,
                read_only=token.read_only,
                feeds=token.feeds,
                token_key=token.key,
                expires=token.expires,
            )
            # Valid until the next write anywhere (a revocation is one): see authenticate().
            cached = self._tokens[digest] = (token, principal, (owner.name, owner.email))
        token, principal, names = cached
        if token.expires is not None and token.expires <= time.time():
            raise Unauthorized("the token has expired", scheme=scheme)
        if token.cidrs and not _ip_allowed(client_ip, token.cidrs):
            raise Unauthorized("the token may not be used from this address", scheme=scheme)
        if user is not None and user not in ("api", *names):
            raise Unauthorized("the user name does not match the token's owner", scheme=scheme)
        return principal

    async def _by_password(self, name: str, password: str, client_ip: str | None) -> Principal:
        if not self._allow_password:
            raise Unauthorized("password sign-in is turned off on this server: use a token")
        digest = hash_token(f"{name}\x00{password}")
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        user = await self.check_password(name, password, client_ip)
        principal = Principal(user.id, user.name, user.email, user.admin)
        self._cache[digest] = principal
        return principal

    async def check_password(self, name: str, password: str, client_ip: str | None) -> User:
        """The user, if the password is right; :class:`Unauthorized` otherwise, and
        :class:`TooManyRequests` after too many failures for that user or address."""
        keys = (f"user:{name.lower()}", f"ip:{client_ip or '-'}")
        wait = self.limiter.retry_after(*keys)
        if wait:
            raise TooManyRequests(
                f"too many failed sign-ins: try again in {wait} seconds", retry_after=wait
            )
        user = await self._meta.get_user(name)
        if not verify_password(user.password_hash if user else None, password) or user is None:
            self.limiter.failed(*keys)
            raise Unauthorized("incorrect username or password")
        self.limiter.succeeded(keys[0])
        return user

    async def check_second_factor(self, user: User, otp: str | None) -> None:
        """For a user with an authenticator: the ``npm-otp`` code must be right and unused.

        Raises 401 with ``WWW-Authenticate: OTP``, which makes npm prompt for the code and
        send the request again.
        """
        if not user.totp_secret:
            return
        if not otp:
            raise Unauthorized(
                "this needs a one-time password from your authenticator app (--otp)",
                scheme="OTP",
            )
        step = totp.matching_step(user.totp_secret, otp)
        if step is not None:
            if not await self._meta.use_totp_step(user.id, step):
                raise Unauthorized("that one-time password was already used", scheme="OTP")
            return
        code_hash = hash_token(otp.strip().lower())
        if code_hash in user.recovery_hashes:
            remaining = [h for h in user.recovery_hashes if h != code_hash]
            await self._meta.update_user(user.id, {"recovery_hashes": remaining})
            return
        raise Unauthorized("the one-time password is not valid", scheme="OTP")

    async def issue_token(
        self,
        user: User,
        *,
        read_only: bool = False,
        feeds: Sequence[str] = (),
        cidrs: Sequence[str] = (),
        expires_days: float | None = None,
        description: str = "",
    ) -> tuple[str, Token]:
        """Create a token: the secret is returned here, once, and stored only as a hash."""
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise BadRequest(f"not an address range: {cidr!r}") from None
        secret = new_token_secret()
        expires = time.time() + expires_days * 86400 if expires_days is not None else None
        token = await self._meta.create_token(
            user_id=user.id,
            key=uuid.uuid4().hex,
            secret_hash=hash_token(secret),
            read_only=read_only,
            feeds=list(feeds),
            cidrs=list(cidrs),
            expires=expires,
            description=description,
            prefix=secret[: len(TOKEN_PREFIX) + 4],
        )
        return secret, token

    async def revoke_secret(self, secret: str) -> Token | None:
        """Revoke the token whose secret this is; the token, or None if unknown."""
        token = await self._meta.find_token(hash_token(secret))
        if token is None or token.revoked:
            return None
        await self._meta.revoke_token(token.key)
        return token


def _ip_allowed(client_ip: str | None, cidrs: Sequence[str]) -> bool:
    if client_ip is None:
        return False
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(c, strict=False) for c in cidrs)
