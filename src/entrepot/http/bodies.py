"""Reading request bodies within limits: refused from ``Content-Length`` before reading,
or as soon as a chunked body grows past the limit; gzip bodies (npm audit) inflated in
bounds."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.requests import Request

from entrepot.errors import BadRequest, PayloadTooLarge, RequestTimeout

#: A client that sends nothing for this long is dropped (slow-loris bodies).
IDLE_TIMEOUT = 60.0
#: ... nor less than this many bytes: a trickle of a few bytes at a time does not count.
MIN_PROGRESS = 1024


async def read_body(request: Request, limit: int, idle_timeout: float = IDLE_TIMEOUT) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BadRequest("invalid Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    clock = asyncio.get_running_loop().time
    # The clock restarts only once MIN_PROGRESS more bytes have come: a client trickling a
    # few bytes a second holds a connection as long as one that sends nothing, and no longer.
    deadline, counted = clock() + idle_timeout, 0
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise RequestTimeout(
                f"the request body stalled for {idle_timeout:g} seconds; giving up"
            ) from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if size - counted >= MIN_PROGRESS:
            deadline, counted = clock() + idle_timeout, size
    body = b"".join(chunks)
    if request.headers.get("content-encoding", "").lower() == "gzip":
        body = _gunzip(body, limit)
    return body


async def read_json(
    request: Request, limit: int, idle_timeout: float = IDLE_TIMEOUT
) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else."""
    body = await read_body(request, limit, idle_timeout)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


async def read_form(request: Request, limit: int = 64 * 1024) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body, first value of each field."""
    body = await read_body(request, limit)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form is not valid") from None
    return {key: values[0] for key, values in fields.items()}


def _gunzip(body: bytes, limit: int) -> bytes:
    inflate = zlib.decompressobj(wbits=31)
    try:
        out = inflate.decompress(body, limit + 1)
    except zlib.error:
        raise BadRequest("the gzip-encoded body is corrupt") from None
    if len(out) > limit or inflate.unconsumed_tail:
        raise PayloadTooLarge(f"the request body unpacks to over {limit} bytes")
    return out
