"""Downloading images: only from a client's allowed hosts, only images, never too big.

    refusal(url, allowed)   pure: why a URL may not be fetched, or None
    sniff(head)             pure: (MIME type, extension) from the first bytes, or None
    download(...)           the I/O: GET, each redirect checked again, the body read with a cap

Where an image may come from is the client's setting, never the payload's
(SPEC §7): the host of its `[clients.<id>.source]` base_url and its
`allowed_image_hosts`.  Redirects are followed by hand, at most
`MAX_REDIRECTS`, and each hop must be on an allowed host too, so a CDN's
`http → https` hop works while a redirect to anywhere else is refused.
No token is sent: image hosts are public (a CDN), and a token must never
follow a redirect.  Whether the bytes are an image is decided from the bytes,
not from the Content-Type the server claims: their first bytes while the body
streams in (so a large HTML page stops after a dozen bytes), then Pillow
opens and verifies the whole image (a PNG with a broken chunk, a truncated
file).  SVG is refused (it can carry scripts).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import aiohttp
import PIL
import PIL.Image
from yarl import URL

from handlers.connectors.http import (
    classify_status,
    display_url,
    http_error,
    read_start,
    transport_errors,
)
from handlers.errors import PermanentError

MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_KINDS = "a PNG, JPEG, GIF or WebP image"
_PIL_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")


@dataclass(frozen=True, slots=True)
class Image:
    """A downloaded image that passed every check."""

    data: bytes
    mime: str
    extension: str
    url: str  # where it came from, without query: for messages and logs
    sha256: str  # hex digest of `data`: names the stored file


def sniff(head: bytes) -> tuple[str, str] | None:
    """`(mime, extension)` when `head` starts like a PNG, JPEG, GIF or WebP file, else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", "jpg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif", "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", "webp"
    return None


def refusal(url: URL, allowed: Collection[str]) -> str | None:
    """Why `url` may not be fetched (scheme, credentials, host not allowed), or None."""
    if url.scheme not in ("http", "https") or not url.host:
        return "not an http:// or https:// URL with a host"
    if url.user is not None or url.password is not None:
        return "a URL with credentials is not allowed"
    host = url.host.lower().rstrip(".")
    if host not in allowed:
        hosts = ", ".join(sorted(allowed))
        return (f"host '{host}' is neither the client's source host nor in its "
                f"allowed_image_hosts ({hosts})")
    return None


def parse_url(text: str) -> URL:
    """The URL, or PermanentError naming what is wrong with it."""
    try:
        return URL(text)
    except ValueError as exc:
        raise PermanentError(f"image URL is not a URL: {exc}") from None


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    allowed: Collection[str],
    max_bytes: int,
    timeout: aiohttp.ClientTimeout,
    headers: Mapping[str, str],
) -> Image:
    """Fetch one image.

    Raises:
        PermanentError: refused URL or redirect, 4xx, not an image, over `max_bytes`.
        TransientError: timeout, connection error, HTTP 408/429/5xx.
    """
    target = parse_url(url)
    reason = refusal(target, allowed)
    if reason:
        raise PermanentError(f"image URL {display_url(target)} refused: {reason}")
    for _ in range(MAX_REDIRECTS + 1):
        with transport_errors("GET", target, timeout):
            async with session.get(target, headers=headers, timeout=timeout,
                                   allow_redirects=False) as resp:
                if resp.status not in _REDIRECTS:
                    return await _read_image(resp, target, max_bytes)
                target = _next_hop(target, resp.headers.get("Location"), allowed)
    raise PermanentError(f"image URL {display_url(parse_url(url))} redirects more than "
                         f"{MAX_REDIRECTS} times")


def _next_hop(current: URL, location: str | None, allowed: Collection[str]) -> URL:
    if not location:
        raise PermanentError(f"image URL {display_url(current)} redirects without a Location")
    hop = current.join(parse_url(location))
    reason = refusal(hop, allowed)
    if reason:
        raise PermanentError(
            f"image URL {display_url(current)} redirects to {display_url(hop)}, refused: {reason}"
        )
    return hop


async def _read_image(resp: aiohttp.ClientResponse, url: URL, max_bytes: int) -> Image:
    """The body, checked to be an image within `max_bytes` while it streams in."""
    where = display_url(url)
    if classify_status(resp.status) != "ok":
        raise http_error("GET", url.raw_path, resp.status, await read_start(resp))
    declared = resp.content_length
    if declared is not None and declared > max_bytes:
        raise PermanentError(f"image {where} is {declared} bytes, over the limit of "
                             f"{max_bytes} (S2SQ_IMAGE_MAX_BYTES)")
    data = bytearray()
    kind: tuple[str, str] | None = None
    async for chunk in resp.content.iter_chunked(_CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise PermanentError(f"image {where} is over the limit of {max_bytes} bytes "
                                 "(S2SQ_IMAGE_MAX_BYTES)")
        if kind is None and len(data) >= 12:
            kind = _kind_or_refuse(bytes(data[:12]), resp, where)
    body = bytes(data)
    kind = kind or _kind_or_refuse(body, resp, where)
    await asyncio.to_thread(verify, body, kind[0], where)
    return Image(body, kind[0], kind[1], where, hashlib.sha256(body).hexdigest())


def verify(data: bytes, mime: str, where: str) -> None:
    """PermanentError unless Pillow reads `data` as an intact image of type `mime` (CPU-bound)."""
    try:
        # Only the four formats' decoders are tried: less of Pillow faces the download.
        with PIL.Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as image:
            found = PIL.Image.MIME.get(image.format or "")
            image.verify()
    except PIL.UnidentifiedImageError:
        reason = "it cannot be read"
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as exc:
        reason = str(exc) or type(exc).__name__
    else:
        if found == mime:
            return
        reason = f"it reads as {found or 'something else'}"
    raise PermanentError(f"image {where} starts like {mime} but is not a valid image: {reason}")


def _kind_or_refuse(head: bytes, resp: aiohttp.ClientResponse, where: str) -> tuple[str, str]:
    kind = sniff(head)
    if kind is None:
        claimed = resp.headers.get("Content-Type", "none")[:80]
        raise PermanentError(f"image {where} is not {_KINDS} (Content-Type: {claimed})")
    return kind
