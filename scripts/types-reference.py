"""Write docs/types.md, the instruction-type reference, from the registered handlers.

    .venv/bin/python scripts/types-reference.py

Builtins only: plug-ins installed in this environment are left out, so the
file describes what s2s-queue ships (tests/handlers/test_reference.py checks it
is current).
"""

from __future__ import annotations

from pathlib import Path

from handlers import BUILTIN_HANDLERS
from handlers.reference import markdown

TARGET = Path(__file__).resolve().parent.parent / "docs" / "types.md"

if __name__ == "__main__":
    TARGET.write_text(markdown(BUILTIN_HANDLERS), encoding="utf-8")
    print(f"wrote {TARGET}")
