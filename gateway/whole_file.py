"""Files the API sends whole: stored uploads and training plots."""

from __future__ import annotations

from typing import Any

from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send


class WholeFileResponse(FileResponse):
    """A FileResponse that ignores `Range` and says so (`Accept-Ranges: none`; RFC 9110 §14.2 lets a
    server ignore the header). Starlette answers a malformed or unsatisfiable range itself, in plain
    text, outside the API's JSON error shape (API.md); these are images a browser fetches whole."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers["accept-ranges"] = "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope.get("headers", []) if name.lower() != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)
