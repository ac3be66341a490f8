"""structlog set-up, done once from the CLI: JSON lines, or colours on a terminal.

`hot_info` is for the one line per item on the hot path: with JSON output it
writes the very line structlog would (fields, then `event`, `level`,
`timestamp`) without the processor chain, which measured at a tenth of the
daemon's CPU per item (bench/RESULTS.md); otherwise it is `log.info`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


_log = structlog.get_logger()


def _structlog_info(event: str, **fields: Any) -> None:
    _log.info(event, **fields)


hot_info: Callable[..., None] = _structlog_info
"""`hot_info(event, **fields)`: an info line, cheap when the output is JSON."""


def json_writer(stream: BinaryIO) -> Callable[..., None]:
    """A `hot_info` that writes JSON lines to `stream` (what `configure("json")` installs)."""

    def write(event: str, **fields: Any) -> None:
        fields["event"] = event
        fields["level"] = "info"
        fields["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        stream.write(orjson.dumps(fields) + b"\n")
        stream.flush()

    return write


def configure(fmt: str = "json", level: str = "info") -> None:
    """Configure structlog (and route stdlib logging, e.g. aio-pika's, through it)."""
    global hot_info
    if fmt == "json" and LEVELS[level] <= logging.INFO:
        hot_info = json_writer(sys.stdout.buffer)
    elif LEVELS[level] <= logging.INFO:
        hot_info = _structlog_info
    else:
        hot_info = _ignore
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors: list[structlog.types.Processor] = [
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ]
        factory: structlog.types.WrappedLogger = structlog.BytesLoggerFactory(sys.stdout.buffer)
    else:
        processors = [*shared, structlog.dev.ConsoleRenderer()]
        factory = structlog.PrintLoggerFactory(sys.stdout)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(LEVELS[level], logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def _ignore(event: str, **fields: Any) -> None:
    """Info lines are filtered out at this level."""
