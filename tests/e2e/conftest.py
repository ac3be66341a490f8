"""Fixtures of the console's browser tests (tests/console.py has the rest of what they share)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

from tests.console import ACME_TOKEN, ADMIN_TOKEN, CHROMIUM
from tests.support import FakeShop, clients_toml, free_port, settings_for


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def console_settings(prefix: str, tmp_path: Path, shop: FakeShop) -> Any:
    digest = hashlib.sha256(ACME_TOKEN.encode()).hexdigest()
    path = tmp_path / "clients.toml"
    path.write_text(clients_toml(shop.url, ["acme", "globex"],
                                 acme=f'console_token_sha256 = "{digest}"'))
    return settings_for(prefix, tmp_path, clients_file=path, http_port=free_port(),
                        admin_token=ADMIN_TOKEN, nonblocking_retry_delays="0.3")
