"""The core: the consumers, the park protocol, the state log, the outbox and the one place
an outcome is reported (docs/architecture.md)."""
