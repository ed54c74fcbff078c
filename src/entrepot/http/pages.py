"""The few server-rendered pages: web sign-in for ``npm login``."""

from __future__ import annotations

from html import escape

from starlette.responses import HTMLResponse

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem;
color:#1d1d1f;background:#fff}
@media (prefers-color-scheme:dark){body{color:#eee;background:#161618}
input{background:#222;color:#eee;border-color:#555}}
label{display:block;margin:.8rem 0 .2rem}input{width:100%;padding:.5rem;font-size:1rem;
box-sizing:border-box;border:1px solid #bbb;border-radius:4px}
button{margin-top:1.2rem;padding:.6rem 1.2rem;font-size:1rem}.error{color:#c62828}
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)} - Entrepot</title><style>{_STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def login_form(action: str, *, error: str = "", name: str = "", status: int = 200) -> HTMLResponse:
    problem = f"<p class=error role=alert>{escape(error)}</p>" if error else ""
    return _page(
        "Sign in to npm",
        f"<p>npm is waiting for you to sign in to this registry.</p>{problem}"
        f"<form method=post action='{escape(action)}'>"
        f"<label for=name>User name</label>"
        f"<input id=name name=name autocomplete=username required value='{escape(name)}'>"
        f"<label for=password>Password</label>"
        f"<input id=password name=password type=password autocomplete=current-password required>"
        f"<label for=otp>One-time password (if you use an authenticator)</label>"
        f"<input id=otp name=otp inputmode=numeric autocomplete=one-time-code>"
        f"<button type=submit>Sign in</button></form>",
        status,
    )


def login_done(name: str) -> HTMLResponse:
    return _page(
        "Signed in",
        f"<p>You are signed in as <b>{escape(name)}</b>. You can close this window: npm "
        f"has its token.</p>",
    )


def login_gone() -> HTMLResponse:
    return _page(
        "Link expired",
        "<p>This sign-in link has expired or was already used. Run <code>npm login</code> "
        "again.</p>",
        404,
    )
