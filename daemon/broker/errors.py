"""What an operation on a channel raises when the broker or the channel went away under it."""

from __future__ import annotations

from aio_pika.exceptions import AMQPError, ChannelInvalidStateError

CHANNEL_ERRORS: tuple[type[BaseException], ...] = (
    AMQPError, ChannelInvalidStateError, ConnectionError,
)
"""The broker or the channel went away under an operation (a publish, an ack, a close).

`AMQPError` is what the broker said (a channel or connection closed by it),
`ChannelInvalidStateError` an operation on a channel that closed meanwhile
(aiormq's; a `RuntimeError`, so a site that also suppresses `RuntimeError`
says so itself), `ConnectionError` a connection that dropped.
"""
