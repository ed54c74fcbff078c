"""The one exception hierarchy of Entrepot.

Every error a client can cause is a :class:`RegistryError`; the HTTP layer renders it once,
as npm-shaped JSON ``{"error": "..."}`` with the class's status code::

    RegistryError
    ├── BadRequest (400)
    │   ├── InvalidName
    │   ├── InvalidVersion
    │   └── InvalidPublish
    ├── Unauthorized (401)
    ├── Forbidden (403)
    │   └── VersionExists
    ├── NotFound (404)
    ├── RequestTimeout (408)
    ├── Conflict (409)
    ├── PayloadTooLarge (413)
    ├── TooManyRequests (429)
    └── InsufficientStorage (507)

Store errors that are not the client's fault (a broken database) are not RegistryErrors:
they are 500s, logged, and the body says nothing about the internals.
"""

from __future__ import annotations

from collections.abc import Mapping


class RegistryError(Exception):
    """An error the client caused or can act on; rendered as ``{"error": message}``."""

    status_code = 500

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(RegistryError):
    """The request is malformed: bad JSON, a bad path, a body that does not add up."""

    status_code = 400


class InvalidName(BadRequest):
    """A package, feed or user name that the rules refuse."""


class InvalidVersion(BadRequest):
    """A version that is not SemVer 2."""


class InvalidPublish(BadRequest):
    """A publish body whose parts disagree: name, version, attachment, integrity, tarball."""


class Unauthorized(RegistryError):
    """No credentials, or credentials that identify nobody.

    The ``WWW-Authenticate`` header decides what npm prints: ``Basic`` gives "Incorrect or
    missing password", ``Bearer`` gives "Unable to authenticate".
    """

    status_code = 401

    def __init__(self, message: str, *, scheme: str = "Basic") -> None:
        # npm recognises a one-time-password challenge only as the bare token "OTP".
        challenge = "OTP" if scheme == "OTP" else f'{scheme} realm="entrepot"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(RegistryError):
    """Signed in, but not allowed to do this."""

    status_code = 403


class VersionExists(Forbidden):
    """The version is, or was, published: version numbers are never reused."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(
            f"cannot publish over the previously published versions: {version} "
            f"({name}@{version} is or was published, and version numbers are never reused)"
        )


class NotFound(RegistryError):
    """Nothing here, or nothing this caller may see."""

    status_code = 404


class Conflict(RegistryError):
    """The document changed since the client read it (a stale ``_rev``)."""

    status_code = 409


class RequestTimeout(RegistryError):
    """The client stopped sending its request body."""

    status_code = 408


class PayloadTooLarge(RegistryError):
    """The request body is over the configured limit."""

    status_code = 413


class TooManyRequests(RegistryError):
    """Too many failed attempts; ``Retry-After`` says when to try again."""

    status_code = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UpstreamUnavailable(RegistryError):
    """Every connector that could answer failed, and nothing is cached."""

    status_code = 502


class UpstreamTimeout(UpstreamUnavailable):
    status_code = 504


class InsufficientStorage(RegistryError):
    """The store has no room for the write; nothing was written."""

    status_code = 507
