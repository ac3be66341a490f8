"""Render one notification email of each kind into docs/notifications/ (text, HTML, screenshot).

    .venv/bin/python scripts/render-emails.py

The mails are made by the daemon's own code (`common.mail.render`) from
sample failures; the screenshots are the HTML parts in headless Chromium at
a phone's width (Debian's `chromium`; skipped with a note when it is missing).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import mail  # noqa: E402 (after the path is set)
from daemon.core.notifications import Failure  # noqa: E402
from daemon.core.notify_rules import digest_entry, fold  # noqa: E402
from daemon.settings import Settings  # noqa: E402

OUT = ROOT / "docs" / "notifications"
SETTINGS = Settings(console_url="https://queue.example.com", admin_emails="ops@s2s.example",
                    notify_digest_window=300, _env_file=None)
TO, CC = mail.recipients(["it@acme.example"], SETTINGS.admin_email_list)


def samples() -> dict[str, mail.Mail]:
    parked = Failure(
        "acme", "blocking", "7f3c9a10-sku-ABC-1", "product.sync",
        'PUT /rest/V1/products/ABC-1 → HTTP 400: {"message":"The value of attribute '
        '\\"price\\" must be set."}', 3, "2026-11-28T09:14:03.512Z",
        {"sku": "ABC-1", "product": {"name": "Garden chair"}}).job()
    failed = [Failure("acme", "nonblocking", f"order-{n}", "order.add_to_source",
                      f'POST /orders → HTTP 422: {{"error":"customer {n} has no tax number"}}',
                      1, f"2026-11-28T09:{n - 991}:00.000Z", {"order": {"id": n}}).job()
              for n in range(1001, 1013)]
    memory: dict[str, Any] = {}
    for job in failed[1:]:
        fold(memory, {"kind": "digest.add", "client_id": "acme", "id": job["id"], "t": 1.0,
                      "entry": digest_entry(job)})
    common: dict[str, Any] = {"client_name": "Acme Ltd", "to": TO, "cc": CC,
                              "settings": SETTINGS}
    return {
        "parked": mail.render("parked", parked, **common),
        "failed": mail.render("failed", failed[0], **common),
        "digest": mail.render("digest", {"client_id": "acme", "id": "digest:acme:1"},
                              digest=memory["acme"]["digest"], **common),
    }


def screenshot(html: Path, png: Path, height: int) -> bool:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: no screenshots (apt-get install chromium)")
        return False
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", f"--window-size=420,{height}", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    return True


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for kind, rendered in samples().items():
        (OUT / f"{kind}.txt").write_text(f"Subject: {rendered.subject}\n"
                                         f"To: {', '.join(rendered.to)}\n"
                                         f"Cc: {', '.join(rendered.cc)}\n\n{rendered.text}")
        html = OUT / f"{kind}.html"
        html.write_text(rendered.html)
        shot = screenshot(html, OUT / f"{kind}.png", 2000 if kind == "digest" else 820)
        print(f"{kind}: {html.relative_to(ROOT)}" + (" + .png" if shot else ""))


if __name__ == "__main__":
    main()
