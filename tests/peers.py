"""Real loopback peers for handler tests: a Magento 2 store and an image host.

`FakeMagento` speaks enough of Magento 2's REST API to check what the
connector sends: `/rest/V1/products/{sku}` and `/rest/V1/products/{sku}/media[/{id}]`,
bearer auth with the integration token, and Magento's error body shape
`{"message": "...%1...", "parameters": [...]}`.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support import serve

MAGENTO_TOKEN = "m2-integration-T0KEN-91d2"


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG image (RGB, all red)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def magento_error(status: int, message: str, parameters: Any = None) -> web.Response:
    body: dict[str, Any] = {"message": message}
    if parameters is not None:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


@dataclass
class FakeMagento:
    """A Magento 2 store: products and their media gallery, kept in memory."""

    url: str = ""
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # stored file path -> bytes
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, raw path)
    fail_next: list[web.Response] = field(default_factory=list)
    _next_id: int = 1

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_put("/rest/V1/products/{sku}", self.put_product)
        app.router.add_delete("/rest/V1/products/{sku}", self.delete_product)
        app.router.add_get("/rest/V1/products/{sku}/media", self.list_media)
        app.router.add_post("/rest/V1/products/{sku}/media", self.add_media)
        app.router.add_delete("/rest/V1/products/{sku}/media/{entry_id}", self.delete_media)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.raw_path))
        if request.headers.get("Authorization") != f"Bearer {MAGENTO_TOKEN}":
            return magento_error(401, "The consumer isn't authorized to access %resources.",
                                 {"resources": "Magento_Catalog::products"})
        if self.fail_next:
            return self.fail_next.pop(0)
        response: web.StreamResponse = await handler(request)
        return response

    async def put_product(self, request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        body = await request.json()
        product = body.get("product") if isinstance(body, dict) else None
        if not isinstance(product, dict):
            return magento_error(400, '"%fieldName" is required. Enter and try again.',
                                 {"fieldName": "product"})
        if not product.get("name"):
            return magento_error(400, 'The "%1" attribute value is empty. Set the attribute and '
                                 "try again.", ["name"])
        self.products[sku] = product
        return web.json_response({"id": len(self.products), **product})

    def _missing(self) -> web.Response:
        return magento_error(404, "The product that was requested doesn't exist. Verify the "
                             "product and try again.")

    async def delete_product(self, request: web.Request) -> web.Response:
        if self.products.pop(request.match_info["sku"], None) is None:
            return self._missing()
        return web.json_response(True)

    async def list_media(self, request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        if sku not in self.products:
            return self._missing()
        return web.json_response(self.media.get(sku, []))

    async def add_media(self, request: web.Request) -> web.Response:
        sku = request.match_info["sku"]
        if sku not in self.products:
            return self._missing()
        entry = (await request.json())["entry"]
        content = entry.pop("content")
        try:
            data = base64.b64decode(content["base64_encoded_data"], validate=True)
        except binascii.Error:
            return magento_error(400, "The image content must be valid base64 encoded data.")
        path = self._file_path(content["name"])
        self.files[path] = data
        entry = {**entry, "id": self._next_id, "file": path, "mime": content["type"]}
        self._next_id += 1
        self.media.setdefault(sku, []).append(entry)
        return web.json_response(str(entry["id"]))

    def _file_path(self, name: str) -> str:
        """Magento's dispersion path, with `_1`, `_2`... when the name is taken."""
        stem, ext = name.rsplit(".", 1)
        path, n = f"/{name[0]}/{name[1]}/{name}", 0
        while path in self.files:
            n += 1
            path = f"/{name[0]}/{name[1]}/{stem}_{n}.{ext}"
        return path

    async def delete_media(self, request: web.Request) -> web.Response:
        entries = self.media.get(request.match_info["sku"], [])
        wanted = int(request.match_info["entry_id"])
        kept = [e for e in entries if e["id"] != wanted]
        if len(kept) == len(entries):
            return magento_error(404, "No image with the provided ID was found. Verify the ID "
                                 "and try again.")
        self.media[request.match_info["sku"]] = kept
        return web.json_response(True)

    def entries(self, sku: str) -> list[dict[str, Any]]:
        return self.media.get(sku, [])


@asynccontextmanager
async def fake_magento() -> AsyncIterator[FakeMagento]:
    store = FakeMagento()
    async with serve(store.app()) as url:
        store.url = url
        yield store


@dataclass
class ImageHost:
    """Serves a real PNG, a non-image, oversized bodies, redirects and a failing path."""

    url: str = ""
    forbidden_url: str = ""  # the same server under a host name the clients do not allow
    image: bytes = field(default_factory=png)
    hits: list[str] = field(default_factory=list)
    status_next: list[int] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name}", self.get)
        return app

    async def get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append(name)
        if self.status_next:
            return web.Response(status=self.status_next.pop(0), text="busy, try later")
        if name == "chair.png":
            return web.Response(body=self.image, content_type="image/png")
        if name == "broken.png":  # starts like a PNG, then its header chunk is damaged
            return web.Response(body=self.image[:20] + b"\0\0\0\0" + self.image[24:],
                                content_type="image/png")
        if name == "notes.png":  # lies about its type
            return web.Response(body=b"<html>not an image</html>", content_type="image/png")
        if name == "huge-declared.png":
            return web.Response(body=self.image + b"\0" * 5000, content_type="image/png")
        if name == "huge-streamed.png":
            return await self._stream(request, self.image + b"\0" * 5000)
        if name == "loop.png":
            raise web.HTTPFound("/loop.png")
        if name == "hop.png":
            raise web.HTTPFound(f"{self.url}/chair.png")
        if name == "away.png":
            raise web.HTTPFound(f"{self.forbidden_url}/chair.png")
        return web.Response(status=404, text="no such image")

    @staticmethod
    async def _stream(request: web.Request, body: bytes) -> web.StreamResponse:
        """A chunked response: no Content-Length, so only counting while reading can stop it."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 1000):
            await response.write(body[start:start + 1000])
        await response.write_eof()
        return response


@asynccontextmanager
async def image_host() -> AsyncIterator[ImageHost]:
    host = ImageHost()
    async with serve(host.app()) as url:
        host.url = url
        host.forbidden_url = url.replace("127.0.0.1", "localhost")
        yield host


def json_body(raw: bytes) -> Any:
    return orjson.loads(raw)
