"""The bounded waiting queue for uploads (gateway/accounts.AuthenticateUploadsFirst admits to it).

An upload is admitted before its body is read, reserving its declared size (Content-Length; the
largest accepted body when it is sent chunked). Admitted bodies are received and spooled by
Starlette's multipart parser (to /tmp past 1 MiB a file, in memory below) and wait there for one of
the in-memory processing slots (settings.concurrent_uploads, gateway/admission.upload_slot). The
queue is bounded by count and by reserved bytes, sized to the pod's /tmp: past either, the next
upload gets 503 with Retry-After before a byte of it is read.

Used from the event loop only (admission and release both run there), so plain integers suffice.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UploadQueue:
    max_uploads: int
    max_bytes: int
    uploads: int = 0
    reserved_bytes: int = 0

    def try_admit(self, size: int) -> bool:
        """Reserve room for one upload of `size` bytes; False (nothing reserved) when it does not fit."""
        if self.uploads + 1 > self.max_uploads or self.reserved_bytes + size > self.max_bytes:
            return False
        self.uploads += 1
        self.reserved_bytes += size
        return True

    def release(self, size: int) -> None:
        """Give back what try_admit(size) reserved, once the upload is answered."""
        self.uploads -= 1
        self.reserved_bytes -= size
