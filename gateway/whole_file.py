"""Files the API sends whole: stored uploads and training plots."""

from __future__ import annotations

import os
from collections.abc import Mapping

from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from gateway.storage import OpenBlob


class WholeFileResponse(FileResponse):
    """A FileResponse that ignores `Range` and says so (`Accept-Ranges: none`; RFC 9110 §14.2 lets a
    server ignore the header). Starlette answers a malformed or unsatisfiable range itself, in plain
    text, outside the API's JSON error shape (API.md); these are images a browser fetches whole."""

    # FileResponse's own parameters, spelled out: FastAPI reads a response class's default
    # `status_code` from its signature to document a route (with `*args, **kwargs` it found none and
    # /openapi.json failed with a 500).
    def __init__(
        self,
        path: str | os.PathLike[str],
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
        filename: str | None = None,
        stat_result: os.stat_result | None = None,
    ) -> None:
        super().__init__(path, status_code=status_code, headers=headers, media_type=media_type,
                         background=background, filename=filename, stat_result=stat_result)
        self.headers["accept-ranges"] = "none"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(name, value) for name, value in scope.get("headers", []) if name.lower() != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


class WholeBlobResponse(StreamingResponse):
    """A stored blob (local file or S3 object) streamed whole, in chunks, with its length: the same
    answer as WholeFileResponse (a `Range` header is ignored, `Accept-Ranges: none`)."""

    def __init__(self, blob: OpenBlob, media_type: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(blob.chunks, media_type=media_type, headers=headers)
        self.headers["content-length"] = str(blob.size)
        self.headers["accept-ranges"] = "none"
        self.close_unsent = blob.close   # for a response that will not be sent after all
