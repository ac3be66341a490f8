"""The CLI as a user runs it: a subprocess against the real broker, one line on failure."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from tests.support import AMQP_URL, ROOT, Broker, free_port, running, settings_for

pytestmark = pytest.mark.timeout(90)


async def cli(*argv: str, **env: str) -> tuple[int, str, str]:
    """Run `s2s-queue` with only these S2SQ_* variables; its exit code, stdout and stderr."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("S2SQ_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon", *argv, cwd=ROOT, env={**clean, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("argv", "exchange"),
    [
        (["status", "demo"], "control"),
        (["unrouted", "list"], "control"),
        (["retry", "acme", "--reason", "fixed"], "control"),
        (["publish", "--client", "acme", "--type", "system.noop", "--payload", "{}"],
         "blocking"),
    ],
    ids=["status", "unrouted-list", "retry", "publish"],
)
async def test_a_prefix_no_daemon_ever_ran_is_one_line_naming_the_prefix(prefix, argv, exchange):
    """Issue 12, hole 10: the broker is up but has nothing of this prefix (say --config was
    left out): one line naming the prefix and the likely cause, exit 3, no traceback."""
    code, out, err = await cli(*argv, S2SQ_AMQP_URL=AMQP_URL, S2SQ_PREFIX=prefix)
    assert (code, out) == (3, "")
    assert err == (f"s2s-queue: no daemon with prefix '{prefix}' has run on this broker (no "
                   f"exchange '{prefix}.{exchange}'); is --config or S2SQ_PREFIX missing?\n")


@pytest.mark.parametrize("argv", [["status"], ["clients", "add", "acme"], ["demo"]],
                         ids=["status", "clients-add", "demo"])
async def test_an_unreachable_broker_is_one_line_naming_it_without_the_password(argv):
    """Nothing listens on the port: exit 4, host and port named, the password never shown."""
    port = free_port()
    code, out, err = await cli(*argv, S2SQ_AMQP_URL=f"amqp://guest:pw-s3cret@127.0.0.1:{port}/")
    assert (code, out) == (4, "")
    assert err == f"s2s-queue: broker unreachable at 127.0.0.1:{port}: connection refused\n"


async def test_an_unreachable_cluster_is_one_line_naming_every_node_without_a_password():
    """S2SQ_AMQP_URL lists two nodes, neither answers: exit 4, both named, no password."""
    ports = [free_port(), free_port()]
    urls = ",".join(f"amqp://guest:pw-s3cret-{n}@127.0.0.1:{port}/" for n, port in enumerate(ports))
    code, out, err = await cli("status", S2SQ_AMQP_URL=urls)
    assert (code, out) == (4, "")
    assert err == (f"s2s-queue: broker unreachable at 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}:"
                   " connection refused\n")


async def test_the_cli_uses_the_second_node_when_the_first_does_not_answer(prefix, amqp):
    """A dead first URL is skipped: the command goes through the next one."""
    urls = f"amqp://guest:guest@127.0.0.1:{free_port()}/,{AMQP_URL}"
    code, _out, err = await cli("clients", "add", "acme", S2SQ_AMQP_URL=urls, S2SQ_PREFIX=prefix)
    assert (code, err) == (0, "")


async def test_a_refused_login_is_one_line_without_the_password():
    """A wrong password: exit 4, one line; the password it tried is not in it."""
    url = AMQP_URL.replace("guest:guest@", "guest:pw-s3cret@")
    assert url != AMQP_URL, "the test broker URL has guest:guest@"
    code, out, err = await cli("status", S2SQ_AMQP_URL=url)
    assert (code, out) == (4, "")
    assert err == ("s2s-queue: broker unreachable at 127.0.0.1:5672: the broker refused the "
                   "login (wrong user name or password?)\n")


async def test_no_daemon_answering_is_one_line(prefix, amqp: Broker):
    """The prefix's exchanges exist (a daemon ran once) but none runs now: exit 3."""
    code, out, err = await cli("status", S2SQ_AMQP_URL=AMQP_URL, S2SQ_PREFIX=prefix)
    assert (code, out) == (3, "")
    assert err == f"s2s-queue: no daemon with prefix '{prefix}' answered within 10 s\n"


async def test_an_unreadable_payload_file_is_bad_usage_in_one_line(tmp_path: Path):
    """`publish --file` of a file that is not there: exit 2 before reaching any broker."""
    missing = tmp_path / "nope.json"
    code, out, err = await cli("publish", "--client", "acme", "--type", "system.noop",
                               "--file", str(missing),
                               S2SQ_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert (code, out) == (2, "")
    assert err == f"s2s-queue: cannot read the payload file {missing}: No such file or directory\n"


async def test_the_demo_prints_hints_that_work_as_printed(prefix, tmp_path, amqp: Broker):
    """The demo's hints carry the --config it was given: the status hint, run as printed,
    answers about the demo client instead of missing the prefix."""
    config = tmp_path / "demo.toml"
    config.write_text(f'prefix = "{prefix}"\namqp_url = "{AMQP_URL}"\n')
    async with running(settings_for(prefix, tmp_path, http_port=0)):
        code, out, err = await cli("--config", str(config), "demo")
        assert (code, err) == (0, "")
        hints = [line.strip() for line in out.splitlines() if line.startswith("  s2s-queue")]
        assert hints[0] == f"s2s-queue --config {config} status demo"
        status_code, status_out, status_err = await cli(*shlex.split(hints[0])[1:])
    assert (status_code, status_err) == (0, "")
    assert json.loads(status_out)["client"]["client_id"] == "demo"
    assert all(hint.startswith(f"s2s-queue --config {config} ") for hint in hints)


async def test_output_to_a_reader_that_left_ends_quietly(prefix, tmp_path, amqp: Broker):
    """`s2s-queue status | head -1`: the reader closes the pipe before the answer is
    written. Exit 141 as for SIGPIPE, nothing on stderr (before: a BrokenPipeError
    traceback)."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("S2SQ_")}
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    async with running(settings_for(prefix, tmp_path, http_port=0)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "status", cwd=ROOT,
            env={**clean, "S2SQ_AMQP_URL": AMQP_URL, "S2SQ_PREFIX": prefix},
            stdout=write, stderr=asyncio.subprocess.PIPE)
        os.close(write)
        _, err = await proc.communicate()
    assert (proc.returncode, err.decode()) == (141, "")
