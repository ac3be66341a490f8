"""The CLI's parsing: argv to control messages, bad usage, bad settings (no broker needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from daemon.faces.cli import build_parser, control_request, main


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No S2SQ_* variable from the outside, and an empty cwd so no stray `.env` is read."""
    for name in list(os.environ):
        if name.upper().startswith("S2SQ_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def request(*argv: str) -> dict[str, Any]:
    return control_request(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["status"], {"action": "status", "client_id": None}),
        (["status", "acme"], {"action": "status", "client_id": "acme"}),
        (["retry", "acme"],
         {"action": "retry", "client_id": "acme", "message_id": None, "reason": None}),
        (["retry", "acme", "--message-id", "m-1", "--reason", "fixed the SKU"],
         {"action": "retry", "client_id": "acme", "message_id": "m-1", "reason": "fixed the SKU"}),
        (["skip", "acme"],
         {"action": "skip", "client_id": "acme", "message_id": None, "reason": None}),
        (["skip", "acme", "--reason", "duplicate", "--message-id", "m-2"],
         {"action": "skip", "client_id": "acme", "message_id": "m-2", "reason": "duplicate"}),
        (["pause", "acme"], {"action": "pause", "client_id": "acme"}),
        (["resume", "acme"], {"action": "resume", "client_id": "acme"}),
        (["resume-all", "acme", "globex"],
         {"action": "resume_all", "client_ids": ["acme", "globex"]}),
        (["clients", "add", "acme"], {"action": "register", "client_id": "acme"}),
        (["clients", "list"], {"action": "status"}),
        (["unrouted", "list"], {"action": "list_unrouted"}),
        (["unrouted", "replay", "acme"], {"action": "replay_unrouted", "client_id": "acme"}),
        (["failed", "list"], {"action": "list_failed", "client_id": None}),
        (["failed", "list", "--client", "acme"], {"action": "list_failed", "client_id": "acme"}),
        (["failed", "retry", "m-1"], {"action": "retry_failed", "message_id": "m-1"}),
        (["failed", "skip", "m-1"], {"action": "skip_failed", "message_id": "m-1"}),
    ],
)
def test_each_command_sends_its_control_message(argv, message):
    """The CLI reaches the same operations as control messages (SPEC §5, §8)."""
    assert request(*argv) == message


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "s2s.toml", "status"],
        ["status", "--config", "s2s.toml"],
        ["clients", "add", "acme", "--config", "s2s.toml"],
        ["failed", "retry", "m-1", "--config", "s2s.toml"],
    ],
)
def test_config_is_accepted_before_or_after_the_command(argv):
    """`--config` works wherever an operator types it."""
    assert build_parser().parse_args(argv).config == Path("s2s.toml")


def test_without_config_no_file_is_named():
    """No `--config` means no TOML file, not a default path."""
    assert not hasattr(build_parser().parse_args(["status"]), "config")


def test_publish_reads_its_options():
    """Client, type, payload or file, message id, and which queue."""
    args = build_parser().parse_args(
        ["publish", "--client", "acme", "--type", "system.noop", "--payload", "{}",
         "--message-id", "m-1", "--nonblocking"]
    )
    assert (args.client, args.type, args.payload, args.file, args.message_id, args.nonblocking) == (
        "acme", "system.noop", "{}", None, "m-1", True
    )


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["explode"], id="unknown-command"),
        pytest.param(["retry"], id="retry-without-client"),
        pytest.param(["skip"], id="skip-without-client"),
        pytest.param(["pause"], id="pause-without-client"),
        pytest.param(["resume-all"], id="resume-all-without-clients"),
        pytest.param(["status", "a", "b"], id="status-two-clients"),
        pytest.param(["clients"], id="clients-without-subcommand"),
        pytest.param(["clients", "add"], id="clients-add-without-client"),
        pytest.param(["unrouted", "replay"], id="replay-without-client"),
        pytest.param(["failed"], id="failed-without-subcommand"),
        pytest.param(["failed", "retry"], id="failed-retry-without-id"),
        pytest.param(["publish", "--client", "acme", "--type", "system.noop"], id="no-payload"),
        pytest.param(
            ["publish", "--client", "a", "--type", "t", "--payload", "{}", "--file", "p.json"],
            id="payload-and-file",
        ),
        pytest.param(["retry", "acme", "--colour", "red"], id="unknown-option"),
    ],
)
def test_bad_usage_exits_2(argv, capsys: pytest.CaptureFixture[str]):
    """argparse refuses it with exit code 2 and a usage line on stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: s2s-queue")


def test_a_missing_config_file_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]):
    """The reason names the file, and nothing tries to reach the broker."""
    assert main(["--config", "/nonexistent.toml", "status"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "s2s-queue: bad settings: config file /nonexistent.toml does not exist\n"
    )
    assert captured.out == ""


@pytest.mark.parametrize(
    ("toml", "reason"),
    [
        ('prefx = "typo"\n', "config file {config}: unknown setting(s) prefx"),
        ('queue_type = "stream"\n', "queue_type: Input should be 'quorum' or 'classic'"),
    ],
)
def test_a_bad_setting_in_the_config_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml, reason
):
    """The line names the setting and what is wrong with it."""
    config = tmp_path / "s2s.toml"
    config.write_text(toml)
    assert main(["--config", str(config), "status"]) == 2
    expected = reason.format(config=config)
    assert capsys.readouterr().err == f"s2s-queue: bad settings: {expected}\n"


def test_a_bad_setting_in_the_environment_exits_2_without_showing_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """The value may be a secret typed in the wrong variable: it is not echoed."""
    monkeypatch.setenv("S2SQ_HTTP_PORT", "S3CRET")
    assert main(["status"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "s2s-queue: bad settings: http_port: Input should be a valid integer,"
        " unable to parse string as an integer\n"
    )


def test_a_config_file_that_is_not_toml_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Like a missing file: one line naming it, exit 2."""
    config = tmp_path / "s2s.toml"
    config.write_text("prefix = = broken\n")
    assert main(["--config", str(config), "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"s2s-queue: bad settings: config file {config}")
    assert err.count("\n") == 1
