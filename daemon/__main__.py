"""`python -m daemon ...`: the same as the `s2s-queue` command."""

import sys

from daemon.main import main

sys.exit(main())
