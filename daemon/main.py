"""The `s2s-queue` command: the CLI face, given the supervisor to run for `s2s-queue run`.

The one module that sees both ends: the CLI (a face) never imports the
supervisor, which imports every layer below it (docs/architecture.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from daemon.faces import cli
from daemon.supervisor import run


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, serve=run)


if __name__ == "__main__":
    sys.exit(main())
