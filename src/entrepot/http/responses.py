"""JSON responses and error rendering, npm-shaped: ``{"error": "..."}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from entrepot.errors import RegistryError

JSON = "application/json"


def json_response(
    data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: RegistryError) -> Response:
    return json_response({"error": exc.message}, exc.status_code, exc.headers)
