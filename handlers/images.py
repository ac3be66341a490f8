"""`image.sync` and `image.fetch`: a product's images on the sales channel, and on our disk.

Image URLs come from the payload, but where they may point is the client's
setting (SPEC §7): its `[clients.<id>.source]` host and its
`allowed_image_hosts` (handlers/connectors/images.py does the checking).

`image.fetch` stores each image as `S2SQ_IMAGE_DIR/<client>/<sku>/<sha256>.<ext>`:
named by its content, so a re-run (at-least-once delivery) finds the file
already there; written to a temporary file in the same folder and renamed,
so a reader never sees half an image.  The SKU becomes one folder name with
everything that could leave the folder escaped (`/`, `\\`, `..`, a leading
dot), and the resolved path is checked to be inside the client's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from yarl import URL

from common.clients import ClientConfig, split_host_port
from common.http import USER_AGENT, display_url
from handlers.base import ONE_LINE, Context, Handler, Item
from handlers.connectors.http import Fetch, ImageEntry
from handlers.connectors.images import (
    HostPort,
    Image,
    download,
    image_session,
    parse_url,
    refusal,
)
from handlers.errors import PermanentError, TransientError
from handlers.products import Sku

log = structlog.get_logger()

ImageId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ImageUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+", max_length=2048),
                     ONE_LINE]
Text = Annotated[str, StringConstraints(max_length=255), ONE_LINE]
_MAX_FOLDER_NAME = 200  # bytes; file systems allow 255


class SyncImagePayload(BaseModel):
    """An image of a product on the sales channel: add or replace it, or delete it."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"sku": "ABC-1", "image_id": "front", "action": "upsert",
         "url": "https://cdn.acme.example/abc-1/front.png", "label": "Front", "roles": ["image"]},
        {"sku": "ABC-1", "image_id": "front", "action": "delete"},
    ]})

    sku: Sku
    image_id: ImageId = Field(description="the platform's id of the image: 1-64 of A-Z a-z 0-9 _ -")
    action: Literal["upsert", "delete"]
    url: ImageUrl | None = Field(None, validate_default=True,
                                 description="where the image is (upsert only)")
    label: Text | None = None
    position: Annotated[int, Field(ge=0)] | None = None
    roles: Annotated[list[Text], Field(max_length=8)] = Field(
        [], description="Magento image roles: image, small_image, thumbnail, swatch_image")

    @field_validator("url")
    @classmethod
    def _upsert_has_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None and info.data.get("action") == "upsert":
            raise ValueError("required when action is 'upsert'")
        return url


class FetchImagesPayload(BaseModel):
    """Images to download into the daemon's image folder for a product."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"examples": [
        {"sku": "ABC-1", "urls": ["https://cdn.acme.example/abc-1/front.png"]},
    ]})

    sku: Sku
    urls: Annotated[list[ImageUrl], Field(min_length=1, max_length=50)]


def image_hosts(config: ClientConfig, client_id: str) -> frozenset[HostPort]:
    """The hosts images may come from, each with the port it names: the source's host (and
    the port its base_url names) and `allowed_image_hosts`."""
    hosts = {split_host_port(entry) for entry in config.allowed_image_hosts}
    if config.source is not None:
        source = URL(config.source.base_url)
        hosts.add(((source.host or "").lower(), source.explicit_port))
    if not hosts:
        raise PermanentError(
            f"client '{client_id}' has no image hosts: add allowed_image_hosts or a "
            f"[clients.{client_id}.source] section to the clients file"
        )
    return frozenset(hosts)


def check_urls(urls: list[str], allowed: frozenset[HostPort]) -> None:
    """PermanentError for the first URL that may not be fetched, before anything is fetched."""
    for url in urls:
        parsed = parse_url(url)
        reason = refusal(parsed, allowed)
        if reason:
            raise PermanentError(f"image URL {display_url(parsed)} refused: {reason}")


@asynccontextmanager
async def fetcher(ctx: Context, client_id: str, allowed: frozenset[HostPort]) -> AsyncIterator[
        Fetch]:
    """`download` bound to the client's hosts and the daemon's size limit and timeout, on a
    session of its own that reaches public addresses only (`image_session`)."""
    headers = {"User-Agent": USER_AGENT, "X-S2S-Client": client_id}
    async with image_session() as session:
        yield partial(download, session, allowed=allowed,
                      max_bytes=ctx.settings.image_max_bytes, timeout=ctx.request_timeout,
                      headers=headers)


async def sync_image(item: Item[SyncImagePayload], ctx: Context) -> None:
    """Add, replace or delete the image on the client's sales channel."""
    p = item.payload
    api = ctx.connector(item.client_id, "channel")
    if p.action == "delete":
        await api.delete_image(p.sku, p.image_id, message_id=item.message_id)
        return
    assert p.url is not None  # the payload's validator requires it for an upsert
    allowed = image_hosts(ctx.client(item.client_id), item.client_id)
    check_urls([p.url], allowed)
    entry = ImageEntry(p.sku, p.image_id, p.url, p.label, p.position, tuple(p.roles))
    async with fetcher(ctx, item.client_id, allowed) as fetch:
        await api.put_image(entry, fetch, message_id=item.message_id)


async def fetch_images(item: Item[FetchImagesPayload], ctx: Context) -> None:
    """Download each image and store it under `S2SQ_IMAGE_DIR/<client>/<sku>/`."""
    p = item.payload
    allowed = image_hosts(ctx.client(item.client_id), item.client_id)
    check_urls(p.urls, allowed)
    folder = image_folder(ctx.settings.image_dir, item.client_id, p.sku)
    async with fetcher(ctx, item.client_id, allowed) as fetch:
        for url in p.urls:
            image = await fetch(url)
            path = await asyncio.to_thread(store, folder, image)
            log.info("image.stored", client_id=item.client_id, message_id=item.message_id,
                     sku=p.sku, url=image.url, path=str(path), bytes=len(image.data))


def folder_name(sku: str) -> str:
    """The SKU as one safe folder name: escaped so that it can never leave its parent (pure)."""
    name = quote(sku, safe="")  # `/`, `\`, NUL, `%`... escaped; letters, digits, `_.-~` kept
    if name.startswith("."):  # `.`, `..`, and hidden names
        name = "%2E" + name[1:]
    if len(name.encode()) > _MAX_FOLDER_NAME:
        digest = hashlib.sha256(sku.encode()).hexdigest()[:16]
        name = f"{name[:_MAX_FOLDER_NAME - 17]}~{digest}"
    return name


def image_folder(root: Path, client_id: str, sku: str) -> Path:
    """`root/<client>/<sku folder>`, checked to be inside `root/<client>`."""
    client_root = (root / client_id).resolve()
    folder = (client_root / folder_name(sku)).resolve()
    if folder.parent != client_root:
        raise PermanentError(f"SKU {sku[:80]!r} does not make a folder inside {client_root}")
    return folder


def store(folder: Path, image: Image) -> Path:
    """Write `image` as `folder/<sha256>.<ext>` atomically; an existing one is kept (blocking)."""
    target = folder / f"{image.sha256}.{image.extension}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(image.data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise TransientError(f"cannot store the image in {folder}: {exc.strerror or exc}") from exc
    return target


HANDLERS = (
    Handler(type="image.sync", payload=SyncImagePayload, func=sync_image, queue="blocking",
            description="add, replace or delete a product image on the sales channel"),
    Handler(type="image.fetch", payload=FetchImagesPayload, func=fetch_images, queue="blocking",
            description="download product images into S2SQ_IMAGE_DIR/<client>/<sku>/"),
)
