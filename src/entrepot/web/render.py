"""Templates and README rendering.

Jinja2 autoescapes everything; the only markup a template receives unescaped is a README
that went through :func:`render_readme`: Markdown (CommonMark + tables + strikethrough, raw
HTML kept so real-world READMEs look right) and then the ``nh3`` sanitizer (ammonia), which
keeps a fixed set of tags and attributes, drops ``<script>``, ``<style>``, every ``on*``
attribute, ``style``, and any URL whose scheme is not http, https or mailto.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from importlib.resources import files
from typing import Any

import nh3
from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

#: Bigger READMEs are cut (and say so): rendering stays bounded whatever was published.
MAX_README = 256 * 1024

_markdown = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False})
_markdown.enable(["table", "strikethrough"])

_TAGS = nh3.ALLOWED_TAGS - {"area", "map"}
_ATTRIBUTES: dict[str, set[str]] = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "img": {"src", "alt", "title", "width", "height", "align"},
    "a": {"href", "title"},
    "p": {"align"},
    "div": {"align"},
    "h1": {"align"},
    "td": {"align", "colspan", "rowspan"},
    "th": {"align", "colspan", "rowspan"},
    "code": {"class"},
}
_ATTRIBUTES.pop("area", None)
_ATTRIBUTES.pop("map", None)


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    # Classes only for code languages (what a highlighter would read).
    if tag == "code" and attribute == "class":
        return value if value.startswith("language-") and value.isascii() else None
    return value


@functools.lru_cache(maxsize=256)
def _render(text: str) -> str:
    html = _markdown.render(text)
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        attribute_filter=_filter_attribute,
        url_schemes={"http", "https", "mailto"},
        link_rel="nofollow noopener noreferrer ugc",
        strip_comments=True,
    )


def render_readme(text: str) -> Markup:
    """A package's README as safe HTML (cached by content)."""
    cut = len(text) > MAX_README
    html = _render(text[:MAX_README])
    if cut:
        html += "<p><em>(The README is longer than this and was cut.)</em></p>"
    return Markup(html)  # noqa: S704 (sanitized by nh3 above)


def _static_version() -> str:
    digest = hashlib.blake2b(digest_size=6)
    for name in sorted(STATIC_FILES):
        digest.update(STATIC_FILES[name][0])
    return digest.hexdigest()


def _load_static() -> dict[str, tuple[bytes, str]]:
    kinds = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
    out: dict[str, tuple[bytes, str]] = {}
    for entry in files("entrepot.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in kinds:
            out[entry.name] = (entry.read_bytes(), kinds[suffix])
    return out


#: The static files (name -> bytes, media type), read once.
STATIC_FILES = _load_static()
STATIC_VERSION = _static_version()


def _timestamp(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("entrepot.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["static_version"] = STATIC_VERSION
    env.filters["timestamp"] = _timestamp
    return env


TEMPLATES = _environment()


def render_page(template: str, context: dict[str, Any]) -> str:
    return TEMPLATES.get_template(template).render(**context)
