"""What the metrics add to each item on the hot path, in microseconds.

    python bench/metrics_cost.py [--number 200000]

Times, in a tight loop (best of 5), the calls a succeeded item makes:
`ItemMetrics.count` (from `Outcomes.succeeded`), `ItemMetrics.observe` and the two
`perf_counter` reads around the handler (from `call_handler`); then a whole
`call_handler` of a handler that returns at once, for scale. The daemon spends
~550 µs of CPU per blocking item (bench/RESULTS.md), raw aio-pika ~380 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import timeit
from typing import Any

from pydantic import BaseModel

from daemon.core.items import Parsed
from daemon.core.metrics import SUCCEEDED, ItemMetrics
from daemon.core.runtime import call_handler
from handlers.base import Handler, Item


class Payload(BaseModel):
    pass


async def noop(item: Item[Any], ctx: Any) -> None:
    return None


def best(func: Any, number: int) -> float:
    """Microseconds per call, best of five runs."""
    return min(timeit.repeat(func, number=number, repeat=5)) / number * 1e6


def per_item(metrics: ItemMetrics) -> None:
    started = time.perf_counter()
    metrics.observe("system.noop", "blocking", time.perf_counter() - started)
    metrics.count("system.noop", "blocking", SUCCEEDED)


async def handler_calls(number: int, metrics: ItemMetrics) -> float:
    parsed = Parsed(Item("m-1", "system.noop", "acme", Payload(), "blocking"),
                    Handler(type="system.noop", payload=Payload, func=noop))
    started = time.perf_counter()
    for _ in range(number):
        await call_handler(parsed, 1, None, 60.0, metrics)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=200_000)
    number = parser.parse_args().number
    metrics = ItemMetrics({"system.noop"})
    rows = {
        "count (Outcomes.succeeded)": best(
            lambda: metrics.count("system.noop", "blocking", SUCCEEDED), number),
        "observe (call_handler)": best(
            lambda: metrics.observe("system.noop", "blocking", 0.001), number),
        "both + 2 perf_counter": best(lambda: per_item(metrics), number),
        "whole call_handler, noop handler": min(
            asyncio.run(handler_calls(number // 10, metrics)) for _ in range(5)),
    }
    for name, micros in rows.items():
        print(f"{name:34} {micros:6.2f} µs")


if __name__ == "__main__":
    main()
