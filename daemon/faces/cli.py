"""`s2s-queue`: a thin shell over the supervisor, the producer and control messages.

Exit codes: 0 done; 1 refused by the daemon (or a retry that failed again);
2 bad usage or settings; 3 no daemon answered; 4 broker unreachable.
Every failure is one line on stderr, never a traceback (SPEC section 8).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shlex
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import aio_pika
import aiormq
import orjson
from pydantic import ValidationError

from daemon import logs
from daemon.broker.brokers import connect_robust, scrub, where
from daemon.broker.topology import Topology
from daemon.operations.actions import FIELD, GROUPS, TABLE, Arg
from daemon.settings import ConfigFileError, Settings, load_settings


class CliError(Exception):
    """A one-line reason for stderr, with the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                        help="TOML settings file (keys: setting names without S2SQ_)")
    parser = argparse.ArgumentParser(prog="s2s-queue", parents=[common],
                                     description="Per-client blocking queues on RabbitMQ.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon")
    pub = sub.add_parser("publish", parents=[common], help="publish one item")
    pub.add_argument("--client", required=True)
    pub.add_argument("--type", required=True)
    src = pub.add_mutually_exclusive_group(required=True)
    src.add_argument("--payload", help="the payload as JSON")
    src.add_argument("--file", type=Path, help="a file holding the payload JSON")
    pub.add_argument("--message-id")
    pub.add_argument("--nonblocking", action="store_true", help="publish to the shared queue")
    _add_action_commands(sub, common)
    sub.add_parser("demo", parents=[common], help="publish a few items to a demo client")
    sub.add_parser("types", parents=[common],
                   help="the instruction types this installation runs, plug-ins included"
                   ).add_argument("--markdown", action="store_true",
                                  help="the full reference: fields, limits, examples")
    return parser


def _add_action_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """A command for each of the action table's `commands` (`daemon/operations/actions.py`)."""
    groups: dict[str, Any] = {}
    for action in TABLE:
        for command in action.commands:
            *group, word = command.words
            where = sub
            if group:
                if group[0] not in groups:
                    parent = sub.add_parser(group[0], parents=[common], help=GROUPS[group[0]])
                    groups[group[0]] = parent.add_subparsers(dest=f"{group[0]}_command",
                                                             required=True)
                where = groups[group[0]]
            parser = where.add_parser(word, parents=[common], help=command.help or None)
            parser.set_defaults(action=action.name, action_args=command.args)
            for arg in command.args:
                _add_argument(parser, arg)


def _add_argument(parser: argparse.ArgumentParser, arg: Arg) -> None:
    if arg == "client?":
        parser.add_argument("client", nargs="?")
    elif arg == "clients":
        parser.add_argument("clients", nargs="+", metavar="client")
    else:
        parser.add_argument(arg)


def _value(args: argparse.Namespace, arg: Arg) -> Any:
    """What the command line gave for `arg` (argparse's name for it: client, message_id…)."""
    value = getattr(args, arg.strip("-?").replace("-", "_"))
    return list(value) if arg == "clients" else value


def control_request(args: argparse.Namespace) -> dict[str, Any]:
    """The control message a command sends (pure): its action and the arguments it took."""
    action = getattr(args, "action", None)
    if action is None:
        raise CliError(f"unknown command {args.command}", 2)
    return {"action": action, **{FIELD[arg]: _value(args, arg) for arg in args.action_args}}


def _payload(args: argparse.Namespace) -> Any:
    try:
        text = args.file.read_text() if args.file else args.payload
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise CliError(f"cannot read the payload file {args.file}: {why}", 2) from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CliError(f"payload is not valid JSON: {exc}", 2) from None


COMMAND_ERRORS = (OSError, TimeoutError, aiormq.exceptions.AMQPError)
"""What a command's own connection to the broker raises (AMQPConnectionError is also an
OSError); not the daemon's `CHANNEL_ERRORS`, which say a channel went away under it."""
_NOT_FOUND = re.compile(r"NOT_FOUND - (.*?) in vhost")


def _broker_failure(exc: BaseException, settings: Settings) -> CliError:
    """One line for a broker error: names the prefix or the broker, never the password."""
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        found = _NOT_FOUND.search(str(exc))
        what = found.group(1) if found else str(exc)
        message = (f"no daemon with prefix {settings.prefix!r} has run on this broker ({what});"
                   " is --config or S2SQ_PREFIX missing?")
        code = 3
    elif isinstance(exc, aiormq.exceptions.AMQPChannelError):
        message, code = f"the broker refused: {exc}", 4
    else:
        message, code = f"broker unreachable at {_where(settings)}: {_reason(exc)}", 4
    return CliError(scrub(message, settings.amqp_urls), code)


def _where(settings: Settings) -> str:
    """host:port of each broker URL (no user, no password)."""
    return ", ".join(where(url) for url in settings.amqp_urls)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return "the broker refused the login (wrong user name or password?)"
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host name ({cause.strerror})"
    if isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(exc, aiormq.exceptions.ProtocolSyntaxError):
        return ("the broker closed the connection while opening it (does the virtual host "
                "exist, and may this user use it?)")
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return type(exc).__name__


async def _connect(settings: Settings) -> aio_pika.abc.AbstractRobustConnection:
    return await connect_robust(settings.amqp_urls, "s2s-queue cli", timeout=15)


async def _command(settings: Settings, args: argparse.Namespace) -> int:
    payload = _payload(args) if args.command == "publish" else None  # bad usage first
    try:
        answer = await _talk(settings, args, payload)
    except COMMAND_ERRORS as exc:
        raise _broker_failure(exc, settings) from None
    if answer is None:
        return 0
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    if not answer.get("ok"):
        raise CliError(str(answer.get("error", "refused")), 1)
    if answer.get("outcome") == "failed":
        raise CliError(f"retry failed again: {answer.get('error')}", 1)
    return 0


async def _talk(settings: Settings, args: argparse.Namespace,
                payload: Any) -> dict[str, Any] | None:
    """Do the command over one connection: the daemon's answer, or None (printed already)."""
    from daemon.broker.producer import NoAnswer, Producer, send_control

    topo = settings.topology()
    async with await _connect(settings) as connection:
        if args.command == "publish":
            queue: Literal["blocking", "nonblocking"] = (
                "nonblocking" if args.nonblocking else "blocking")
            mid = await Producer(connection, topo).publish(
                args.client, args.type, payload, message_id=args.message_id, queue=queue)
            print(json.dumps({"ok": True, "message_id": mid, "client_id": args.client}))
            return None
        if getattr(args, "action", None) == "register":  # works with no daemon running
            await _register(connection, topo, args.client)
            return None
        if args.command == "demo":
            await _demo(producer=Producer(connection, topo), connection=connection, topo=topo,
                        config=getattr(args, "config", None))
            return None
        request = {k: v for k, v in control_request(args).items() if v is not None}
        request["actor"] = "cli"
        request["via"] = "cli"  # audited as the CLI's, not a bare control message's
        timeout = 10.0 + (settings.handler_timeout if request["action"] == "retry" else 0)
        try:
            return await send_control(connection, topo, request, timeout)
        except NoAnswer:
            raise CliError(f"no daemon with prefix {settings.prefix!r} answered within "
                           f"{timeout:g} s", 3) from None


async def _register(
    connection: aio_pika.abc.AbstractRobustConnection, topo: Topology, client_id: str
) -> int:
    """Register directly in the broker: works whether or not a daemon is running."""
    from common.clients import InvalidClientId, validate_client_id
    from daemon.core.state import register_client

    try:
        validate_client_id(client_id)
    except InvalidClientId as exc:
        raise CliError(str(exc), 2) from None
    await register_client(connection, topo, client_id, "cli", "cli", via="cli")
    print(json.dumps({"ok": True, "client_id": client_id}))
    return 0


async def _demo(*, producer: Any, connection: Any, topo: Topology, config: Path | None) -> int:
    await _register(connection, topo, "demo")
    ids = [await producer.publish("demo", "system.noop", {}) for _ in range(3)]
    ids.append(await producer.publish("demo", "system.noop", {"fail": "permanent"}))
    ids.append(await producer.publish("demo", "system.noop", {}))
    cli = "s2s-queue" if config is None else f"s2s-queue --config {shlex.quote(str(config))}"
    print("published to client 'demo':", ", ".join(ids))
    print("the 4th fails permanently, so 'demo' parks on it; then try:")
    print(f"  {cli} status demo")
    print(f"  {cli} skip demo --message-id {ids[3]} --reason 'demo'")
    return 0


def main(argv: Sequence[str] | None = None, *,
         serve: Callable[[Settings], None] | None = None) -> int:
    """The command line; `serve` runs the daemon for `run` (`daemon.main` passes the
    supervisor's: the CLI, a face, does not import it)."""
    args = build_parser().parse_args(argv)
    if args.command == "types":  # needs no settings, broker or logging
        return _types(markdown=args.markdown)
    try:
        settings = load_settings(getattr(args, "config", None))
    except (ConfigFileError, ValidationError) as exc:
        print(f"s2s-queue: bad settings: {_one_line(exc)}", file=sys.stderr)
        return 2
    logs.configure(settings.log_format, settings.log_level)
    if args.command == "run":
        if serve is None:
            print("s2s-queue: this entry point cannot run the daemon: use `python -m daemon run`",
                  file=sys.stderr)
            return 2
        return _run(settings, serve)
    for name in ("aiormq", "aio_pika"):  # their errors become our one line, not a second
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_command(settings, args))
    except CliError as exc:
        print(f"s2s-queue: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("s2s-queue: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE


def _run(settings: Settings, serve: Callable[[Settings], None]) -> int:
    from common.clients import ClientsFileError
    from handlers import PluginError

    try:
        serve(settings)
    except (ClientsFileError, PluginError) as exc:
        print(f"s2s-queue: {exc}", file=sys.stderr)
        return 2
    except aio_pika.exceptions.AMQPChannelError as exc:
        # e.g. PRECONDITION_FAILED: a queue exists with other arguments (S2SQ_QUEUE_TYPE changed?)
        print(f"s2s-queue: the broker refused: {exc}", file=sys.stderr)
        return 4
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        print(f"s2s-queue: {_broker_failure(exc, settings)}", file=sys.stderr)
        return 4
    return 0


def _types(*, markdown: bool) -> int:
    """Print the registered types (builtins and plug-ins); needs no broker."""
    from handlers import PluginError, load_handlers
    from handlers.reference import markdown as reference

    try:
        registry = load_handlers()
    except PluginError as exc:
        print(f"s2s-queue: {exc}", file=sys.stderr)
        return 2
    if markdown:
        print(reference(registry.values()), end="")
        return 0
    width = max(len(t) for t in registry)
    for handler in registry.values():
        print(f"{handler.type:<{width}}  {handler.queue:<11}  {handler.description}")
    return 0


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
