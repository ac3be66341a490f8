"""The Magento 2 connector (`kind = "magento2"`): Magento's REST API under `{base_url}/rest/V1/`.

    PUT    products/{sku}              {"product": {..., "sku": sku}}   create or update
    DELETE products/{sku}                                              404 = gone already
    GET    products/{sku}/media                                        the product's media entries
    POST   products/{sku}/media        {"entry": {...}}                 add an image (base64)
    DELETE products/{sku}/media/{id}                                   remove one entry

It is the generic HTTP connector with another base path, so the headers,
URL escaping, timeouts and the transient/permanent rule are the same; auth is
the integration's access token as `Authorization: Bearer`.  Magento's error
bodies, `{"message": "...%1...", "parameters": [...]}` (or named parameters,
`%fieldName` with an object), become the readable sentence they stand for.

Images: Magento wants the bytes (base64), so the connector downloads the
image itself through the `fetch` it is given (host-checked, size-capped).
Our entries are recognised by their file name, uploaded as
`s2s_<image_id>_img.<ext>` (Magento adds a dispersion path, and `_1`, `_2`…
when the name is taken).  An upsert adds the new entry first and then removes
every older entry of that image id, so the product never lacks the image and
a re-run after a partial failure converges to exactly one entry.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

import orjson

from handlers.connectors.http import GONE, Fetch, HttpConnector, ImageEntry

_LIST_PARAM = re.compile(r"%(\d+)")
_NAMED_PARAM = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")


def render_message(message: str, parameters: Any) -> str:
    """Magento's `message` with its `%1` / `%name` placeholders filled in from `parameters`."""
    if isinstance(parameters, list):
        values = [str(p) for p in parameters]
        return _LIST_PARAM.sub(
            lambda m: values[int(m[1]) - 1] if 0 < int(m[1]) <= len(values) else m[0], message
        )
    if isinstance(parameters, dict):
        return _NAMED_PARAM.sub(lambda m: str(parameters.get(m[1], m[0])), message)
    return message


def describe_error(body_text: str) -> str:
    """A Magento error body as readable text; any other body unchanged."""
    try:
        data = orjson.loads(body_text)
    except orjson.JSONDecodeError:
        return body_text
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return body_text
    parts = [render_message(data["message"], data.get("parameters"))]
    for error in data.get("errors") or []:
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            parts.append(render_message(error["message"], error.get("parameters")))
    return "; ".join(parts)


def media_name(image_id: str, extension: str) -> str:
    """The file name our image is uploaded under."""
    return f"s2s_{image_id}_img.{extension}"


def is_ours(file: Any, image_id: str) -> bool:
    """Whether a media entry's `file` (`/s/2/s2s_7_img_1.png`) is the image `image_id`."""
    if not isinstance(file, str):
        return False
    stem = file.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return re.fullmatch(rf"s2s_{re.escape(image_id)}_img(_\d+)?", stem, re.IGNORECASE) is not None


class Magento2Connector(HttpConnector):
    """A client's Magento 2 store, through its REST API."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._base = self._base / "rest" / "V1"

    def __repr__(self) -> str:
        return super().__repr__().replace("HttpConnector", "Magento2Connector", 1)

    def describe_body(self, body_text: str) -> str:
        return describe_error(body_text)

    async def put_product(self, sku: str, product: Mapping[str, Any], *, message_id: str) -> None:
        """`PUT products/{sku}` with `{"product": ...}`, the SKU filled in."""
        body = {"product": {**product, "sku": sku}}
        await self.put(("products", sku), body, message_id=message_id)

    async def put_image(self, entry: ImageEntry, fetch: Fetch, *, message_id: str) -> None:
        """Download the image, add it as a media entry, then remove older entries of its id."""
        image = await fetch(entry.url)
        older = await self._entries(entry.sku, entry.image_id, message_id)
        media: dict[str, Any] = {
            "media_type": "image",
            "label": entry.label or "",
            "disabled": False,
            "types": list(entry.roles),
            "content": {
                "base64_encoded_data": base64.b64encode(image.data).decode(),
                "type": image.mime,
                "name": media_name(entry.image_id, image.extension),
            },
        }
        if entry.position is not None:
            media["position"] = entry.position
        await self.post(("products", entry.sku, "media"), {"entry": media},
                        message_id=message_id)
        for entry_id in older:
            await self._delete_entry(entry.sku, entry_id, message_id)

    async def delete_image(self, sku: str, image_id: str, *, message_id: str) -> None:
        """Remove every media entry of `image_id`; none, or no such product, is done already."""
        for entry_id in await self._entries(sku, image_id, message_id, missing_ok=True):
            await self._delete_entry(sku, entry_id, message_id)

    async def _entries(
        self, sku: str, image_id: str, message_id: str, *, missing_ok: bool = False
    ) -> list[str]:
        """Ids of the product's media entries that are `image_id`."""
        listed = await self.request("GET", ("products", sku, "media"), message_id=message_id,
                                    accept=GONE if missing_ok else ())
        if not isinstance(listed, list):
            return []
        return [str(e["id"]) for e in listed
                if isinstance(e, dict) and "id" in e and is_ours(e.get("file"), image_id)]

    async def _delete_entry(self, sku: str, entry_id: str, message_id: str) -> None:
        await self.delete(("products", sku, "media", entry_id), message_id=message_id,
                          accept=GONE)
