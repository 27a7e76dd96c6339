"""A lean HTTP/1.1 client for upload loads: the multipart POSTs an API client sends, for a small part
of the CPU httpx takes per request (benchmarks/README.md, "CPU per diagnosis").

On a small machine the load generator shares the cores with the platform it measures, so its CPU
lowers every gateway figure. Here each concurrent caller keeps one connection open, and each
multipart body is built once per image: per upload only the bytes appended to the file change. What
the server receives is an ordinary HTTP/1.1 multipart upload, a distinct file each time.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import urlsplit


class MultipartUpload:
    """A multipart/form-data body of text fields and one file, built once: `body(suffix)` is the same
    body with `suffix` appended to the file's bytes."""

    def __init__(self, fields: dict[str, str], file_field: str, filename: str, file_type: str,
                 data: bytes) -> None:
        boundary = os.urandom(16).hex()
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
                 for name, value in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                     f'filename="{filename}"\r\nContent-Type: {file_type}\r\n\r\n')
        self._head = "".join(parts).encode() + data
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self.content_type = f"multipart/form-data; boundary={boundary}"

    def body(self, suffix: bytes = b"") -> bytes:
        return self._head + suffix + self._tail


class Reply:
    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code, self.content = status_code, content

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class KeptAliveConnection:
    """One HTTP/1.1 connection to `base_url` (http://host:port), opened on first use and kept open;
    requests on it go one at a time. Opens a new one after the server asked to close."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"an http://host:port URL, not {base_url!r}")
        self._host, self._port, self._timeout = parts.hostname, parts.port, timeout
        self._host_header = f"Host: {parts.hostname}:{parts.port}\r\n"
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        try:
            return await self._post(path, headers, body)
        except BaseException:   # a request cut short leaves the connection unusable
            await self.close()
            raise

    async def _post(self, path: str, headers: dict[str, str], body: bytes) -> Reply:
        async with asyncio.timeout(self._timeout):
            if self._streams is None:
                self._streams = await asyncio.open_connection(self._host, self._port)
            reader, writer = self._streams
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            head += f"Content-Length: {len(body)}\r\n\r\n"
            writer.write(f"POST {path} HTTP/1.1\r\n{self._host_header}{head}".encode() + body)
            status = await reader.readline()
            if not status:
                raise ConnectionError("the server closed the connection")
            length, chunked, closes = 0, False, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = value == b"chunked"
                elif name == b"connection":
                    closes = value == b"close"
            content = await (_read_chunked(reader) if chunked else reader.readexactly(length))
            if closes:
                await self.close()
            return Reply(int(status.split()[1]), content)

    async def close(self) -> None:
        if self._streams is not None:
            writer = self._streams[1]
            self._streams = None
            writer.close()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while size := int((await reader.readline()).split(b";")[0], 16):
        chunks.append(await reader.readexactly(size))
        await reader.readline()
    while await reader.readline() not in (b"\r\n", b""):   # trailers
        pass
    return b"".join(chunks)
