"""Request bodies as the routes see them: JSON that is valid Unicode.

JSON may spell a lone surrogate (``"\\ud800"``), which Python's json module decodes into a str that no
UTF-8 encoder, protobuf string or database accepts: every use of it downstream failed with a 500. The
route class below refuses such a body as FastAPI refuses malformed JSON (400 INVALID_REQUEST naming
``body``), once for every route."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

#: A \\u escape of a surrogate (high or low): the only way a lone one gets into parsed JSON, since the
#: raw bytes of a body are decoded as strict UTF-8. Bodies without one (nearly all) are not walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(item) for item in value)
    return False


class UnicodeJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = json.loads(body)
            found = _SURROGATE_ESCAPE.search(body)
            if found is not None and _lone_surrogate(value):
                # FastAPI answers a JSONDecodeError as its json_invalid validation error (400 here).
                raise json.JSONDecodeError(
                    "a lone surrogate escape is not valid Unicode", body.decode(), found.start()
                )
            self._json = value
        return self._json


class UnicodeJsonRoute(APIRoute):
    """An APIRoute whose handler reads JSON bodies through :class:`UnicodeJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(UnicodeJsonRequest(request.scope, request.receive))

        return route_handler
