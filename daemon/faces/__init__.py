"""Faces: the ways in for people and programs — the CLI, control messages, the HTTP API and
console. A face parses a request, calls the operations layer, and says the answer; it holds
no state of its own and never reaches past operations (docs/architecture.md)."""
