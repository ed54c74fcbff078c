"""Packument and small-tarball answers written to uvicorn's transport in one piece.

uvicorn's httptools cycle turns an ``http.response.start`` message into a header block (two
regular-expression checks per header) and writes it to the socket, then writes the body
with a second ``send(2)``. For a prebuilt answer (a packument variant, a small tarball, a
remembered answer) both are waste: its header block is checked and encoded once, and the
status line, uvicorn's own default headers (``date``), that block and the body go out in
one write. The cycle is then left exactly as its own ``send`` would leave it after the last
body message, so keep-alive, pipelining and timeouts work as before.

This relies on the cycle's attributes, as the zero-copy tarball path does
(:func:`entrepot.http.app._plain_socket_of`). :func:`write_whole` checks the cycle's class
and reads every attribute it needs before it writes anything, and returns False (the caller
sends the two ASGI messages) for any other server, a cycle that lacks one of them, an
access log, a connection that closes after this answer, a transport whose writes are
paused, or a cycle that has started answering.
"""

from __future__ import annotations

import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

#: What uvicorn refuses in a header name or value (its ``HEADER_RE``/``HEADER_VALUE_RE``).
_BAD_NAME = re.compile(rb'[\x00-\x1F\x7F()<>@,;:\[\]={} \t\\"]')
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0A-\x1F\x7F]")
#: Headers uvicorn acts on rather than only writes.
_ACTED_ON = (b"connection", b"transfer-encoding")
_STATUS_200 = b"HTTP/1.1 200 OK\r\n"


#: uvicorn's default headers (a list it replaces every second, for ``date``) and their bytes.
_defaults: tuple[object, bytes] = (None, b"")


def uvicorn_cycle(send: Any) -> Any:
    """uvicorn's httptools response cycle behind ``send``, or None for any other server.
    (Typed loosely: what is read from it is checked where it is read.)"""
    cycle = getattr(send, "__self__", None)
    return cycle if type(cycle) is RequestResponseCycle else None


def _lines(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, int | None] | None:
    """``headers`` as uvicorn writes them, and their Content-Length; None where uvicorn would
    refuse one, act on one, or find Content-Length twice or malformed."""
    parts: list[bytes] = []
    length: int | None = None
    for name, value in headers:
        if _BAD_NAME.search(name) or _BAD_VALUE.search(value):
            return None
        name = name.lower()
        if name in _ACTED_ON:
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        parts += (name, b": ", value, b"\r\n")
    return b"".join(parts), length


def encode_head(headers: list[tuple[bytes, bytes]], body_length: int) -> bytes | None:
    """The header block of a 200 answer with ``body_length`` bytes of body, as uvicorn would
    write it after its own default headers, ending with the blank line; None where uvicorn
    would do more than write it (no Content-Length or a wrong one, a Connection or
    Transfer-Encoding header) or refuse it."""
    encoded = _lines(headers)
    if encoded is None or encoded[1] != body_length:
        return None
    return encoded[0] + b"\r\n"


def write_whole(send: Any, head: bytes, body: bytes | memoryview, head_only: bool) -> bool:
    """Write a whole 200 answer (``head`` from :func:`encode_head`) through the uvicorn
    cycle behind ``send`` in one transport write; False, having written nothing, when the
    caller must send it as ASGI messages instead."""
    global _defaults
    cycle = uvicorn_cycle(send)
    if cycle is None:
        return False
    try:
        busy = (
            cycle.response_started
            or cycle.disconnected
            or not cycle.keep_alive
            or cycle.access_log
            or cycle.flow.write_paused
        )
        defaults = cycle.default_headers
        transport, message_event, on_response = (
            cycle.transport,
            cycle.message_event,
            cycle.on_response,
        )
    except AttributeError:  # a uvicorn whose cycle differs: its own send, unchanged
        return False
    if busy:
        return False
    cached, block = _defaults
    if cached is not defaults:
        encoded = _lines(defaults)
        if encoded is None or encoded[1] is not None:
            return False
        block = encoded[0]
        _defaults = (defaults, block)
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.chunked_encoding = False
    cycle.expected_content_length = 0
    if head_only:
        transport.write(_STATUS_200 + block + head)
    else:
        transport.write(b"".join((_STATUS_200, block, head, body)))
    cycle.response_complete = True
    message_event.set()
    on_response()
    return True
