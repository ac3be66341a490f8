"""s2s-queue: per-client blocking queues and a shared non-blocking queue on RabbitMQ."""

from common import __version__

__all__ = ["__version__"]
