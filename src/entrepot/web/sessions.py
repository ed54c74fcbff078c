"""Browser sessions and CSRF protection for the web UI.

A session is a token (``description`` "web session", 12 hours) whose secret the browser
keeps in an ``HttpOnly``, ``SameSite=Lax`` cookie (``Secure`` over HTTPS): signing out
revokes it, and so does revoking it from "My tokens" or deleting the user, on every process
at once, with no session table. Every form carries a synchronizer token: for a session, an
HMAC of the session secret (so it is bound to the session and needs no storage); before
signing in, the value of a random ``entrepot_csrf`` cookie (double submit). A POST whose
``Origin`` names another site is refused as well.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

from entrepot.errors import Forbidden

SESSION_COOKIE = "entrepot_session"
CSRF_COOKIE = "entrepot_csrf"
SESSION_DAYS = 0.5


def is_secure(request: Request, origin: str) -> bool:
    return request.url.scheme == "https" or origin.startswith("https://")


def session_secret(request: Request) -> str | None:
    value = request.cookies.get(SESSION_COOKIE)
    return value if value and len(value) < 200 else None


def csrf_token(secret: str) -> str:
    """The form token bound to a session secret."""
    return hmac.new(secret.encode(), b"entrepot web form", hashlib.sha256).hexdigest()


def anonymous_csrf(request: Request) -> tuple[str, bool]:
    """The double-submit value for a visitor who is not signed in, and whether it is new."""
    value = request.cookies.get(CSRF_COOKIE, "")
    if len(value) == 43 and value.replace("-", "").replace("_", "").isalnum():
        return value, False
    return secrets.token_urlsafe(32), True


def check_form(request: Request, form: dict[str, str], secret: str | None, origin: str) -> None:
    """Refuse a form post that did not come from one of this server's pages."""
    sent_origin = request.headers.get("origin")
    if sent_origin and sent_origin != "null" and sent_origin.rstrip("/") != origin:
        raise Forbidden("this form was sent from another site")
    expected = csrf_token(secret) if secret else request.cookies.get(CSRF_COOKIE, "")
    sent = form.get("csrf", "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden("the form has expired or did not come from this site: reload the page")


def set_cookie(response: Response, name: str, value: str, *, secure: bool, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="lax",
    )


def clear_cookie(response: Response, name: str, *, secure: bool) -> None:
    response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")
