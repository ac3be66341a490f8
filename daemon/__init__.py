"""s2s-queue: per-client blocking queues and a shared non-blocking queue on RabbitMQ."""

__version__ = "0.1.0"
