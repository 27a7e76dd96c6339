"""Hostile inputs for the gateway's HTTP API, generated deterministically from a seed.

`hostile_cases(seed)` yields raw HTTP requests (method, path, headers, body bytes), each built to be
refused: truncated and bit-flipped JPEG/PNG/DICOM, decompression bombs and 50,000x50,000 headers,
empty bodies, wrong content types, polyglots, `../` and NUL in file names, malformed multipart,
broken JSON, and oversized, injection and unpaired-surrogate strings in every field of the JSON
endpoints. A case whose input may legitimately be accepted (a bit flip that leaves a valid image, a
name with quotes in it) says so in `may_succeed`; every other case must get a 4xx.

The 100 MB body is not here: tests/integration/test_gateway_hostile_inputs.py streams it over a
socket of its own.
"""

from __future__ import annotations

import io
import json
import random
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.support import jpeg_bytes, synthetic_image
from tests.unit.test_imaging import make_dicom

API = "/api/v1"
EXAM_TYPES = ("chest_xray", "skin_lesion", "bone_xray", "auto")
# A session token the test fills in: `auth=True` cases carry it.
PASSWORD = "correct horse 42"


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    auth: bool = False
    # Statuses besides 4xx that are right for this input (e.g. 201 for a bit flip that still decodes).
    may_succeed: frozenset[int] = frozenset()


# --- images ----------------------------------------------------------------------------------------

def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def base_images(seed: int) -> dict[str, tuple[bytes, str]]:
    """Small valid images of each accepted type: name -> (bytes, media type)."""
    rng = np.random.default_rng(seed)
    pixels = (rng.random((96, 96)) * 4000).astype(np.uint16)
    return {
        "jpeg": (jpeg_bytes(synthetic_image("chest_xray", (160, 160), seed=seed)), "image/jpeg"),
        "png": (_png(synthetic_image("skin_lesion", (128, 128), seed=seed)), "image/png"),
        "dicom": (make_dicom(pixels), "application/dicom"),
    }


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_claiming(width: int, height: int, idat: bytes = b"") -> bytes:
    """A well-formed PNG whose IHDR claims width x height (8-bit grey), with the IDAT given."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) \
        + _chunk(b"IEND", b"")


def png_bomb(side: int) -> bytes:
    """A real decompression bomb: side x side grey pixels, all zero, a few hundred KB compressed."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)          # filter byte + pixels
    parts = [compressor.compress(row * 256) for _ in range(side // 256)]
    parts.append(compressor.flush())
    return png_header_claiming(side, side, b"".join(parts))


def jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its frame header (SOF0/SOF2) rewritten to claim width x height."""
    data = bytearray(jpeg)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            data[at + 5:at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise ValueError("no frame header found")


def dicom_claiming(rows: int, columns: int) -> bytes:
    """A DICOM whose Rows/Columns claim rows x columns over a few bytes of pixel data."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((8, 8), np.uint16))))
    dataset.Rows, dataset.Columns = rows, columns
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def other_formats() -> dict[str, bytes]:
    """Image formats the API does not take (415), and things that are no image at all."""
    image = Image.new("RGB", (32, 32), (200, 10, 10))
    out = {}
    for fmt in ("GIF", "BMP", "TIFF", "WEBP", "ICO"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        out[fmt.lower()] = buffer.getvalue()
    out["svg"] = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    out["html"] = b"<!doctype html><script>alert(document.cookie)</script>"
    out["pdf"] = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"
    out["zip"] = b"PK\x03\x04" + b"\0" * 26
    out["elf"] = b"\x7fELF\x02\x01\x01" + b"\0" * 57
    out["text"] = b"hello, this is not an image"
    return out


def polyglots(images: dict[str, tuple[bytes, str]]) -> dict[str, tuple[bytes, bool]]:
    """name -> (bytes, may be accepted): files that are two things at once. A valid image with
    bytes after its end is still that image (the trailing bytes are stored, never executed)."""
    jpeg, png = images["jpeg"][0], images["png"][0]
    html = b"<html><script>alert(1)</script></html>"
    return {
        "jpeg+zip": (jpeg + b"PK\x03\x04" + b"\0" * 40, True),
        "png+html": (png + html, True),
        "html+jpeg-magic": (b"\xff\xd8\xff\xe0" + html, False),
        "png-magic+html": (b"\x89PNG\r\n\x1a\n" + html, False),
        "dicm-preamble+html": (b"\0" * 128 + b"DICM" + html, False),
        "gif+jpeg": (b"GIF89a" + jpeg, False),
        "pdf+jpeg": (b"%PDF-1.4\n" + jpeg, False),
        "jpeg-soi-only": (b"\xff\xd8", False),
        "png-signature-only": (b"\x89PNG\r\n\x1a\n", False),
        "dicm-only": (b"\0" * 128 + b"DICM", False),
    }


# --- multipart -------------------------------------------------------------------------------------

def multipart(parts: list[tuple[str, str | None, bytes, str | None]], boundary: str = "hostileBoundary7") -> tuple[
        dict[str, str], bytes]:
    """headers, body of a multipart/form-data request: parts of (name, filename or None, data, content type)."""
    body = b""
    for name, filename, data, content_type in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        body += head.encode("utf-8", "surrogatepass") + b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


def upload_case(category: str, name: str, data: bytes, exam_type: str = "chest_xray", filename: str = "x.bin",
                content_type: str | None = "application/octet-stream", may_succeed: bool = False,
                path: str = f"{API}/diagnoses") -> Case:
    headers, body = multipart([("exam_type", None, exam_type.encode(), None),
                               ("file", filename, data, content_type)])
    return Case(category, name, "POST", path, headers, body, auth=True,
                may_succeed=frozenset({200, 201}) if may_succeed else frozenset())


def _upload_paths(index: int) -> str:
    # Most uploads go to /diagnoses; every fourth to /previews, which checks the same way.
    return f"{API}/previews" if index % 4 == 3 else f"{API}/diagnoses"


def image_cases(rng: random.Random, images: dict[str, tuple[bytes, str]], mutations: int) -> Iterator[Case]:
    for kind, (data, media_type) in images.items():
        # Truncated: at the very start, inside the header, and at seeded points through the data.
        cuts = sorted({0, 1, 2, 3, 4, 8, 16, 64, 132} | {rng.randrange(1, len(data)) for _ in range(mutations)})
        for index, cut in enumerate(cuts):
            if cut >= len(data):
                continue
            exam = EXAM_TYPES[index % len(EXAM_TYPES)]
            yield upload_case("truncated", f"{kind}[:{cut}]", data[:cut], exam, f"t.{kind}", media_type,
                              path=_upload_paths(index))
        # Bit flips: a flip in the entropy-coded data can leave a valid (if odd) image, which is diagnosed.
        for index in range(mutations):
            flipped = bytearray(data)
            for _ in range(rng.choice((1, 2, 4, 8, 32))):
                at = rng.randrange(len(flipped))
                flipped[at] ^= 1 << rng.randrange(8)
            exam = EXAM_TYPES[index % len(EXAM_TYPES)]
            yield upload_case("bit-flipped", f"{kind}#{index}", bytes(flipped), exam, f"f.{kind}", media_type,
                              may_succeed=True, path=_upload_paths(index))
        # Header bytes flipped only (the first 64): what is read before any pixel.
        for index in range(mutations // 2):
            flipped = bytearray(data)
            at = rng.randrange(min(64, len(flipped)))
            flipped[at] = rng.randrange(256)
            yield upload_case("header-flipped", f"{kind}@{at}#{index}", bytes(flipped), "bone_xray", f"h.{kind}",
                              media_type, may_succeed=True, path=_upload_paths(index))


def bomb_cases(images: dict[str, tuple[bytes, str]]) -> Iterator[Case]:
    jpeg = images["jpeg"][0]
    for width, height in ((50_000, 50_000), (65_535, 65_535), (1, 65_535), (65_535, 1), (0, 0), (30_000, 30_000)):
        for path in (f"{API}/diagnoses", f"{API}/previews"):
            yield upload_case("header-bomb", f"png {width}x{height} {path}", png_header_claiming(width, height),
                              "skin_lesion", "bomb.png", "image/png", path=path)
            yield upload_case("header-bomb", f"jpeg {width}x{height} {path}", jpeg_claiming(jpeg, width, height),
                              "chest_xray", "bomb.jpg", "image/jpeg", path=path)
            yield upload_case("header-bomb", f"dicom {width}x{height} {path}", dicom_claiming(height, width),
                              "auto", "bomb.dcm", "application/dicom", path=path)
    bomb = png_bomb(16_384)         # 268 M pixels behind ~260 KB
    for exam in EXAM_TYPES:
        yield upload_case("decompression-bomb", f"png 16384x16384 {exam}", bomb, exam, "bomb.png", "image/png")
    yield upload_case("decompression-bomb", "png 16384x16384 preview", bomb, "auto", "bomb.png", "image/png",
                      path=f"{API}/previews")
    for fmt, data in other_formats().items():
        for exam in EXAM_TYPES:
            yield upload_case("wrong-format", f"{fmt} as {exam}", data, exam, f"x.{fmt}", "image/png")


def polyglot_cases(images: dict[str, tuple[bytes, str]]) -> Iterator[Case]:
    for name, (data, may_succeed) in polyglots(images).items():
        for exam in EXAM_TYPES:
            yield upload_case("polyglot", f"{name} as {exam}", data, exam, "poly.jpg", "image/jpeg",
                              may_succeed=may_succeed)


HOSTILE_FILENAMES = [
    "../../../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/shadow", "a\x00.jpg", "x.jpg\x00.exe",
    "%2e%2e%2fetc%2fpasswd", "..", ".", "", " ", "x" * 4096, "\u202egpj.exe", "con.jpg", "a\r\nX-Injected: 1",
    "<script>alert(1)</script>.jpg", "'; DROP TABLE diagnoses; --.jpg", "\ud800.jpg", "\U0001f600.jpg",
]


def filename_cases(images: dict[str, tuple[bytes, str]]) -> Iterator[Case]:
    jpeg = images["jpeg"][0]
    for index, filename in enumerate(HOSTILE_FILENAMES):
        # With a body that is no image: refused, whatever the name.
        yield upload_case("filename", f"{filename!r} text", b"not an image at all", "chest_xray", filename,
                          "image/jpeg")
        # With a valid image: the name is never used (uploads are stored by their hash), so accepted.
        if index % 3 == 0:
            yield upload_case("filename", f"{filename!r} image", jpeg, "chest_xray", filename, "image/jpeg",
                              may_succeed=True)


def malformed_multipart_cases(images: dict[str, tuple[bytes, str]]) -> Iterator[Case]:
    jpeg = images["jpeg"][0]
    path = f"{API}/diagnoses"
    good_headers, good = multipart([("exam_type", None, b"chest_xray", None), ("file", "x.jpg", jpeg, "image/jpeg")])
    boundary = "hostileBoundary7"
    raw: dict[str, tuple[dict[str, str], bytes]] = {
        "no boundary parameter": ({"Content-Type": "multipart/form-data"}, good),
        "wrong boundary": ({"Content-Type": "multipart/form-data; boundary=other"}, good),
        "empty boundary": ({"Content-Type": "multipart/form-data; boundary="}, good),
        "boundary 200 chars": ({"Content-Type": "multipart/form-data; boundary=" + "b" * 200}, good),
        "no closing boundary": (good_headers, good[: good.rindex(f"--{boundary}--".encode())]),
        "cut in a part header": (good_headers, good[:60]),
        "cut in the file": (good_headers, good[: len(good) // 2]),
        "only the closing boundary": (good_headers, f"--{boundary}--\r\n".encode()),
        "empty body": (good_headers, b""),
        "garbage": (good_headers, bytes(range(256)) * 8),
        "no part headers": (good_headers, f"--{boundary}\r\n\r\ndata\r\n--{boundary}--\r\n".encode()),
        "part without name": (good_headers, f'--{boundary}\r\nContent-Disposition: form-data\r\n\r\nx\r\n'
                                            f'--{boundary}--\r\n'.encode()),
        "header without colon": (good_headers, f"--{boundary}\r\nContent-Disposition form-data\r\n\r\nx\r\n"
                                               f"--{boundary}--\r\n".encode()),
        "LF only line ends": (good_headers, good.replace(b"\r\n", b"\n")),
        "NUL in part name": multipart([("exam\x00type", None, b"chest_xray", None), ("file", "x.jpg", jpeg, None)]),
        "header line 100 KB": (good_headers, f"--{boundary}\r\nX-Long: {'a' * 100_000}\r\n"
                                             f'Content-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
                                             .encode() + jpeg + f"\r\n--{boundary}--\r\n".encode()),
        "exam_type field of 2 MB": multipart([("exam_type", None, b"a" * 2_000_000, None),
                                              ("file", "x.jpg", jpeg, "image/jpeg")]),
        "1,500 fields": multipart([(f"f{i}", None, b"v", None) for i in range(1500)]
                                  + [("exam_type", None, b"chest_xray", None), ("file", "x.jpg", jpeg, None)]),
        "1,500 files": multipart([("file", f"{i}.jpg", b"x", None) for i in range(1500)]
                                 + [("exam_type", None, b"chest_xray", None)]),
        "file sent as a field": multipart([("exam_type", None, b"chest_xray", None), ("file", None, jpeg, None)]),
        "no file": multipart([("exam_type", None, b"chest_xray", None)]),
        "no exam_type": multipart([("file", "x.jpg", jpeg, "image/jpeg")]),
        "unknown exam_type": multipart([("exam_type", None, b"brain_mri", None), ("file", "x.jpg", jpeg, None)]),
        "exam_type injection": multipart([("exam_type", None, b"chest_xray' OR '1'='1", None),
                                          ("file", "x.jpg", jpeg, None)]),
        "exam_type invalid UTF-8": multipart([("exam_type", None, b"\xff\xfe\xfd", None),
                                              ("file", "x.jpg", jpeg, None)]),
        "empty file": multipart([("exam_type", None, b"chest_xray", None), ("file", "x.jpg", b"", "image/jpeg")]),
        "two files, first empty": multipart([("exam_type", None, b"chest_xray", None), ("file", "a.jpg", b"", None),
                                             ("file", "b.jpg", b"\0\0", None)]),
        "json body": ({"Content-Type": "application/json"}, b'{"exam_type": "chest_xray", "file": "AAAA"}'),
        "urlencoded body": ({"Content-Type": "application/x-www-form-urlencoded"}, b"exam_type=chest_xray&file=abc"),
        "text/plain body": ({"Content-Type": "text/plain"}, b"exam_type=chest_xray"),
        "no content type": ({}, good),
        "image/jpeg body": ({"Content-Type": "image/jpeg"}, jpeg),
        "multipart/mixed": ({"Content-Type": f"multipart/mixed; boundary={boundary}"}, good),
        "content type garbage": ({"Content-Type": ";;;====; boundary"}, good),
    }
    # A preview takes only the file: these carry a valid one, so a preview of them is right.
    valid_file = {"NUL in part name", "no exam_type", "unknown exam_type", "exam_type injection",
                  "exam_type invalid UTF-8"}
    for name, (headers, body) in raw.items():
        yield Case("malformed-multipart", name, "POST", path, headers, body, auth=True)
        yield Case("malformed-multipart", f"{name} (previews)", "POST", f"{API}/previews", headers, body, auth=True,
                   may_succeed=frozenset({200}) if name in valid_file else frozenset())
    yield Case("empty-body", "diagnoses, no body", "POST", path, {"Content-Length": "0"}, b"", auth=True)
    yield Case("empty-body", "previews, no body", "POST", f"{API}/previews", {"Content-Length": "0"}, b"", auth=True)
    yield Case("unauthenticated", "upload without a session", "POST", path, good_headers, good)
    yield Case("unauthenticated", "upload with a forged token", "POST", path,
               {**good_headers, "Authorization": "Bearer " + "A" * 64}, good)
    yield Case("unauthenticated", "upload with a 64 KB token", "POST", path,
               {**good_headers, "Authorization": "Bearer " + "A" * 65536}, good)


# --- JSON ------------------------------------------------------------------------------------------

def hostile_strings(rng: random.Random) -> list[tuple[str, str]]:
    """(label, value) strings for every JSON field."""
    values = [
        ("empty", ""),
        ("1 MB", "a" * 1_000_000),
        ("100 KB multibyte", "\u00e9" * 100_000),
        ("4 KB", "b" * 4096),
        ("SQL injection", "' OR '1'='1' --"),
        ("SQL stacked", "x'); DROP TABLE users; --"),
        ("HTML", "<script>alert(document.cookie)</script>"),
        ("template", "{{7*7}}${7*7}<%= 7*7 %>"),
        ("log4j", "${jndi:ldap://127.0.0.1/a}"),
        ("NUL", "a\x00b"),
        ("only NUL", "\x00"),
        ("control characters", "".join(chr(c) for c in range(32))),
        ("CRLF", "a\r\nSet-Cookie: x=1"),
        ("unpaired high surrogate", "\ud800"),
        ("unpaired low surrogate", "x\udfffy"),
        ("reversed surrogates", "\udc00\ud800"),
        ("RTL override", "\u202eevil"),
        ("zero width", "\u200b\u200c\u200d\ufeff"),
        ("emoji", "\U0001f600" * 50),
        ("path traversal", "../../../../etc/passwd"),
        ("format string", "%s%s%s%n%x"),
        ("whitespace", "   \t  "),
        ("huge number text", "9" * 400),
    ]
    for index in range(8):     # seeded random text over the whole code space, surrogates included
        values.append((f"random #{index}", "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(1, 64)))))
    return values


NON_STRINGS: list[tuple[str, object]] = [
    ("null", None), ("number", 12345), ("float", 1e308), ("bool", True), ("list", ["a"]), ("object", {"a": "b"}),
    ("nested", [[[["x"]]]]),
]

VALID_SIGN_UP = {"email": "", "password": PASSWORD, "first_name": "Ada", "surname": "Lovelace"}
SIGN_UP_FIELDS = ["email", "password", "first_name", "surname", "address1", "address2", "city", "state", "zip",
                  "gender", "birth_date"]


def _json(value: object) -> bytes:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, which is how a client sends them.
    return json.dumps(value).encode()


def _is_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        return False


def json_cases(rng: random.Random, strings: int) -> Iterator[Case]:
    values = hostile_strings(rng)
    chosen = values if strings >= len(values) else rng.sample(values, strings)
    json_headers = {"Content-Type": "application/json"}
    endpoints: dict[str, tuple[dict[str, object], list[str], bool]] = {
        # path: (a valid body, its fields, whether a value in a free-text field may be accepted)
        f"{API}/auth/signup": (VALID_SIGN_UP, SIGN_UP_FIELDS, True),
        f"{API}/auth/signup/check": (VALID_SIGN_UP, SIGN_UP_FIELDS, True),
        f"{API}/auth/login": ({"email": "nobody@example.org", "password": PASSWORD}, ["email", "password"], False),
        f"{API}/auth/password": ({"current_password": "wrong password 1", "new_password": "another horse 43"},
                                 ["current_password", "new_password"], False),
    }
    for path, (valid, fields, free_text) in endpoints.items():
        auth = path.endswith("/password")
        for field_name in fields:
            for label, value in chosen + NON_STRINGS:
                body = dict(valid)
                if "email" in body and field_name != "email":
                    body["email"] = f"h-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}@example.org"
                body[field_name] = value
                # A sign-up with an odd but valid name or address is an account: 201 is right for it.
                # /signup/check answers 200 with messages for any draft.
                ok: frozenset[int] = frozenset()
                if path.endswith("/signup/check"):
                    ok = frozenset({200})
                elif free_text and field_name != "email":
                    ok = frozenset({201})
                yield Case("json-field", f"{path} {field_name}={label}", "POST", path, json_headers, _json(body),
                           auth=auth, may_succeed=ok)
        broken = {
            "not JSON": b"this is not json",
            "truncated": _json(valid)[:-3],
            "array": b"[]",
            "string": b'"x"',
            "number": b"1",
            "null": b"null",
            "empty object": b"{}",
            "empty": b"",
            "deep nesting": b"[" * 100_000 + b"]" * 100_000,
            "deep object nesting": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
            "invalid UTF-8": b'{"email": "\xff\xfe"}',
            "UTF-16": json.dumps(valid).encode("utf-16"),
            "BOM": b"\xef\xbb\xbf" + _json(valid),
            "NaN": b'{"email": NaN, "password": Infinity}',
            "huge integer": b'{"email": ' + b"9" * 5000 + b"}",
            "duplicate keys": b'{"email": "a@b.co", "email": {"x": 1}, "password": "p"}',
            "lone surrogate escape in key": b'{"\\ud800": "x", "email": "a@b.co", "password": "p"}',
            "10,000 keys": _json({f"k{i}": i for i in range(10_000)}),
        }
        for label, body in broken.items():
            # A draft check answers any JSON object with its messages (unknown keys are ignored), and JSON
            # in UTF-16 or behind a BOM is still JSON (RFC 8259 lets a parser take it).
            ok = frozenset({200}) if path.endswith("/signup/check") and _is_object(body) else frozenset()
            yield Case("broken-json", f"{path} {label}", "POST", path, json_headers, body, auth=auth, may_succeed=ok)
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml", "",
                             "application/json; charset=utf-7"):
            yield Case("wrong-content-type", f"{path} as {content_type!r}", "POST", path,
                       {"Content-Type": content_type} if content_type else {}, _json(valid), auth=auth,
                       may_succeed=frozenset({200}) if path.endswith("/signup/check") else frozenset())


def query_and_path_cases(rng: random.Random) -> Iterator[Case]:
    bad_ids = ["..%2F..%2Fetc%2Fpasswd", "%00", "a%00b", "x" * 5000, "%ED%A0%80", "'%20OR%20'1'='1", "-1",
               "00000000-0000-0000-0000-000000000000", "%2e%2e", "%FF%FE", str(uuid.UUID(int=rng.getrandbits(128)))]
    for diagnosis_id in bad_ids:
        for suffix, method in (("", "GET"), ("", "DELETE"), ("/image", "GET"), ("/heatmap", "GET"),
                               ("/retry", "POST")):
            yield Case("path", f"{method} diagnoses/{diagnosis_id[:20]}{suffix}", method,
                       f"{API}/diagnoses/{diagnosis_id}{suffix}", auth=True)
    queries = ["limit=-1", "limit=0", "limit=101", "limit=abc", "limit=1e9", "offset=-5", "offset=99999999999999999999",
               "exam_type=brain", "exam_type=%00", "limit=%ED%A0%80", "offset=1.5", "limit=" + "9" * 5000]
    for query in queries:
        yield Case("query", f"diagnoses?{query[:30]}", "GET", f"{API}/diagnoses?{query}", auth=True)
        if not query.startswith("exam_type="):    # the activity list has no exam-type filter to refuse
            yield Case("query", f"me/activity?{query[:30]}", "GET", f"{API}/me/activity?{query}", auth=True)
    for max_side in ("0", "-1", "15", "4097", "abc", "1e3", "%00"):
        yield Case("query", f"image?max_side={max_side}", "GET",
                   f"{API}/diagnoses/{uuid.UUID(int=rng.getrandbits(128))}/image?max_side={max_side}", auth=True)
    for task, name in (("..", "passwd"), ("pneumonia", "..%2F..%2Fcard.json"), ("pneumonia", "%00.png"),
                       ("nope", "roc.png"), ("pneumonia", "x" * 3000), ("pneumonia", "model.onnx")):
        yield Case("path", f"plots {task}/{name[:20]}", "GET", f"{API}/models/{task}/plots/{name}")
    yield Case("query", "explain=maybe", "POST", f"{API}/diagnoses?explain=maybe",
               *multipart([("exam_type", None, b"chest_xray", None), ("file", "x.jpg", b"\xff\xd8\xff", None)]),
               auth=True)


def hostile_cases(seed: int = 20261207, mutations: int = 60, strings: int = 100) -> list[Case]:
    """Every case, deterministically from `seed`. `mutations`: truncations and bit flips per image
    type; `strings`: how many of the hostile strings go into every JSON field (all by default)."""
    rng = random.Random(seed)
    images = base_images(seed)
    cases = [
        *image_cases(rng, images, mutations),
        *bomb_cases(images),
        *polyglot_cases(images),
        *filename_cases(images),
        *malformed_multipart_cases(images),
        *json_cases(rng, strings),
        *query_and_path_cases(rng),
    ]
    return cases
