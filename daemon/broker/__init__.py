"""The broker layer: names and declarations, connections and channels, deliveries, depths,
leadership and replicas — RabbitMQ and nothing above it (docs/architecture.md)."""
