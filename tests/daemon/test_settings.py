"""Settings: SPEC §8 defaults, S2SQ_* variables, `.env`, a `--config` TOML file, and secrets."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from daemon.settings import ConfigFileError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No S2SQ_* variable from the outside, and an empty cwd so no stray `.env` is read."""
    for name in list(os.environ):
        if name.upper().startswith("S2SQ_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def plain(value: Any) -> Any:
    """A setting's value with any SecretStr unwrapped."""
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def only_error(exc: ValidationError) -> tuple[tuple[str | int, ...], str]:
    """Where and what of a validation error that has exactly one."""
    errors = exc.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], errors[0]["msg"]


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("amqp_url", "amqp://guest:guest@127.0.0.1:5672/"),
        ("prefix", "s2s"),
        ("queue_type", "quorum"),
        ("clients_file", None),
        ("http_host", "127.0.0.1"),
        ("http_port", 8080),
        ("admin_token", None),
        ("smtp_host", "127.0.0.1"),
        ("smtp_port", 25),
        ("smtp_from", "s2s-queue@localhost"),
        ("smtp_username", None),
        ("smtp_password", None),
        ("smtp_starttls", False),
        ("admin_emails", None),
        ("blocking_attempts", 3),
        ("nonblocking_retry_delays", "10,60,300"),
        ("nonblocking_concurrency", 32),
        ("processes", 1),
        ("handler_timeout", 60),
        ("shutdown_timeout", 30),
        ("max_body_bytes", 1_048_576),
        ("image_max_bytes", 10_485_760),
        ("image_dir", Path("./images")),
        ("log_format", "json"),
        ("quorum_initial_group_size", None),
    ],
)
def test_every_default_is_the_one_of_spec_section_8(name, default):
    """With nothing configured, each setting has its documented safe default."""
    assert plain(getattr(load_settings(), name)) == default


def test_the_default_schedule_and_admin_emails_read_as_values():
    """10,60,300 seconds; no admin emails."""
    settings = load_settings()
    assert settings.retry_delays == (10.0, 60.0, 300.0)
    assert settings.admin_email_list == ()


def test_log_format_defaults_to_console_on_a_terminal(monkeypatch: pytest.MonkeyPatch):
    """Humans at a terminal get console logs; everything else gets JSON."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert load_settings().log_format == "console"


@pytest.mark.parametrize(
    ("variable", "text", "name", "value"),
    [
        ("S2SQ_AMQP_URL", "amqp://u:p@rabbit:5672/v", "amqp_url", "amqp://u:p@rabbit:5672/v"),
        ("S2SQ_PREFIX", "run-7", "prefix", "run-7"),
        ("S2SQ_QUEUE_TYPE", "classic", "queue_type", "classic"),
        ("S2SQ_CLIENTS_FILE", "/etc/s2s/clients.toml", "clients_file",
         Path("/etc/s2s/clients.toml")),
        ("S2SQ_HTTP_HOST", "0.0.0.0", "http_host", "0.0.0.0"),
        ("S2SQ_HTTP_PORT", "0", "http_port", 0),
        ("S2SQ_ADMIN_TOKEN", "adm-token", "admin_token", "adm-token"),
        ("S2SQ_SMTP_HOST", "mail.example", "smtp_host", "mail.example"),
        ("S2SQ_SMTP_PORT", "587", "smtp_port", 587),
        ("S2SQ_SMTP_FROM", "queue@example.com", "smtp_from", "queue@example.com"),
        ("S2SQ_SMTP_USERNAME", "mailer", "smtp_username", "mailer"),
        ("S2SQ_SMTP_PASSWORD", "mail-pw", "smtp_password", "mail-pw"),
        ("S2SQ_SMTP_STARTTLS", "true", "smtp_starttls", True),
        ("S2SQ_ADMIN_EMAILS", "a@x.example,b@x.example", "admin_emails",
         "a@x.example,b@x.example"),
        ("S2SQ_BLOCKING_ATTEMPTS", "5", "blocking_attempts", 5),
        ("S2SQ_NONBLOCKING_RETRY_DELAYS", "1,2.5", "nonblocking_retry_delays", "1,2.5"),
        ("S2SQ_NONBLOCKING_CONCURRENCY", "4", "nonblocking_concurrency", 4),
        ("S2SQ_HANDLER_TIMEOUT", "0.5", "handler_timeout", 0.5),
        ("S2SQ_SHUTDOWN_TIMEOUT", "2", "shutdown_timeout", 2.0),
        ("S2SQ_MAX_BODY_BYTES", "100", "max_body_bytes", 100),
        ("S2SQ_IMAGE_MAX_BYTES", "200", "image_max_bytes", 200),
        ("S2SQ_IMAGE_DIR", "/var/lib/s2s/images", "image_dir", Path("/var/lib/s2s/images")),
        ("S2SQ_LOG_FORMAT", "console", "log_format", "console"),
        ("S2SQ_QUORUM_INITIAL_GROUP_SIZE", "3", "quorum_initial_group_size", 3),
    ],
)
def test_an_s2sq_variable_overrides_its_default(
    monkeypatch: pytest.MonkeyPatch, variable, text, name, value
):
    """Each setting is read from S2SQ_<NAME>."""
    monkeypatch.setenv(variable, text)
    assert plain(getattr(load_settings(), name)) == value


@pytest.mark.parametrize(
    ("variable", "text", "name", "message"),
    [
        ("S2SQ_QUEUE_TYPE", "stream", "queue_type", "Input should be 'quorum' or 'classic'"),
        ("S2SQ_HTTP_PORT", "http", "http_port",
         "Input should be a valid integer, unable to parse string as an integer"),
        ("S2SQ_HTTP_PORT", "70000", "http_port", "Input should be less than or equal to 65535"),
        ("S2SQ_PREFIX", "a.b", "prefix", "String should match pattern '^[A-Za-z0-9_-]{1,64}$'"),
        ("S2SQ_BLOCKING_ATTEMPTS", "0", "blocking_attempts",
         "Input should be greater than or equal to 1"),
        ("S2SQ_HANDLER_TIMEOUT", "0", "handler_timeout", "Input should be greater than 0"),
        ("S2SQ_QUORUM_INITIAL_GROUP_SIZE", "0", "quorum_initial_group_size",
         "Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_value_in_the_environment_is_an_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable, text, name, message
):
    """A bad value is refused, not replaced by the default."""
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValidationError) as info:
        load_settings()
    assert only_error(info.value) == ((name,), message)


def test_a_toml_config_file_sets_settings_by_their_lower_case_names(tmp_path: Path):
    """Keys are the setting names without the S2SQ_ prefix."""
    config = tmp_path / "s2s.toml"
    config.write_text(
        'prefix = "from-toml"\nhttp_port = 0\nqueue_type = "classic"\n'
        'nonblocking_retry_delays = "5,50"\nadmin_token = "toml-admin"\n'
    )
    settings = load_settings(config)
    assert (settings.prefix, settings.http_port, settings.queue_type) == ("from-toml", 0, "classic")
    assert settings.retry_delays == (5.0, 50.0)
    assert plain(settings.admin_token) == "toml-admin"


def test_an_unknown_key_in_the_toml_file_is_an_error(tmp_path: Path):
    """A typo never goes unnoticed."""
    config = tmp_path / "s2s.toml"
    config.write_text('prefx = "typo"\n')
    with pytest.raises(ConfigFileError) as info:
        load_settings(config)
    assert str(info.value) == f"config file {config}: unknown setting(s) prefx"


def test_the_environment_beats_the_toml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """S2SQ_* variables override the file; the file still sets the rest."""
    config = tmp_path / "s2s.toml"
    config.write_text('prefix = "from-toml"\nhttp_port = 9000\n')
    monkeypatch.setenv("S2SQ_PREFIX", "from-env")
    settings = load_settings(config)
    assert (settings.prefix, settings.http_port) == ("from-env", 9000)


def test_keyword_overrides_beat_the_environment(monkeypatch: pytest.MonkeyPatch):
    """What the caller passes wins over everything."""
    monkeypatch.setenv("S2SQ_PREFIX", "from-env")
    assert load_settings(prefix="from-code").prefix == "from-code"


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path):
    """`.env` sets S2SQ_* settings like the environment."""
    (tmp_path / ".env").write_text("S2SQ_PREFIX=from-dotenv\nS2SQ_HTTP_PORT=0\n")
    settings = load_settings()
    assert (settings.prefix, settings.http_port) == ("from-dotenv", 0)


def test_the_environment_beats_dotenv_and_dotenv_beats_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    """Sources, highest first: environment, `.env`, the TOML file."""
    (tmp_path / ".env").write_text("S2SQ_PREFIX=from-dotenv\nS2SQ_SMTP_HOST=dotenv.example\n")
    config = tmp_path / "s2s.toml"
    config.write_text('prefix = "from-toml"\nsmtp_host = "toml.example"\nsmtp_port = 2525\n')
    monkeypatch.setenv("S2SQ_PREFIX", "from-env")
    settings = load_settings(config)
    assert (settings.prefix, settings.smtp_host, settings.smtp_port) == (
        "from-env", "dotenv.example", 2525
    )


def test_a_dotenv_variable_without_the_s2sq_prefix_is_ignored(tmp_path: Path):
    """A `.env` shared with other programs holds their variables too; they are not ours."""
    (tmp_path / ".env").write_text("DATABASE_URL=postgres://db/app\nS2SQ_PREFIX=from-dotenv\n")
    assert load_settings().prefix == "from-dotenv"


def test_the_toml_file_applies_only_to_the_load_that_named_it(tmp_path: Path):
    """A later load without `--config` sees the defaults again."""
    config = tmp_path / "s2s.toml"
    config.write_text('prefix = "from-toml"\n')
    assert load_settings(config).prefix == "from-toml"
    assert load_settings().prefix == "s2s"


def test_a_missing_config_file_is_an_error_naming_the_path(tmp_path: Path):
    """Starting with settings other than the ones asked for would be worse than not starting."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigFileError) as info:
        load_settings(missing)
    assert str(info.value) == f"config file {missing} does not exist"


def test_a_directory_given_as_config_file_is_an_error(tmp_path: Path):
    """Only a regular file will do."""
    with pytest.raises(ConfigFileError) as info:
        load_settings(tmp_path)
    assert str(info.value) == f"config file {tmp_path} does not exist"


def test_a_config_file_that_is_not_toml_is_a_config_file_error_naming_the_path(tmp_path: Path):
    """The error says which file is broken."""
    config = tmp_path / "s2s.toml"
    config.write_text("prefix = = broken\n")
    with pytest.raises(ConfigFileError) as info:
        load_settings(config)
    assert str(config) in str(info.value)


@pytest.mark.parametrize(
    ("text", "normalised", "delays"),
    [
        ("10,60,300", "10,60,300", (10.0, 60.0, 300.0)),
        (" 10, 60 ,300 ", "10,60,300", (10.0, 60.0, 300.0)),
        ("0.5", "0.5", (0.5,)),
        ("1,,2", "1,2", (1.0, 2.0)),
    ],
)
def test_nonblocking_retry_delays_are_comma_separated_seconds(text, normalised, delays):
    """Spaces and empty entries are dropped; `retry_delays` gives the numbers."""
    settings = load_settings(nonblocking_retry_delays=text)
    assert settings.nonblocking_retry_delays == normalised
    assert settings.retry_delays == delays


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b", "Value error, must be comma-separated seconds, e.g. 10,60,300"),
        ("10s,60s", "Value error, must be comma-separated seconds, e.g. 10,60,300"),
        ("0", "Value error, every delay must be a finite number of seconds over 0"),
        ("10,-1", "Value error, every delay must be a finite number of seconds over 0"),
    ],
)
def test_bad_nonblocking_retry_delays_are_refused_with_a_reason(text, message):
    """The message says what a schedule looks like."""
    with pytest.raises(ValidationError) as info:
        load_settings(nonblocking_retry_delays=text)
    assert only_error(info.value) == (("nonblocking_retry_delays",), message)


@pytest.mark.parametrize("text", ["nan", "inf", "10,nan"])
def test_a_retry_delay_that_is_not_a_finite_number_is_refused(text):
    """nan and inf are not seconds to wait."""
    with pytest.raises(ValidationError):
        load_settings(nonblocking_retry_delays=text)


def test_admin_emails_split_on_commas():
    """Spaces and empty entries are dropped."""
    settings = load_settings(admin_emails=" a@x.example, b@y.example ,, ")
    assert settings.admin_email_list == ("a@x.example", "b@y.example")


SECRETS = {
    "amqp_url": "amqp://daemon:AMQP-S3CRET@rabbit:5672/",
    "admin_token": "ADMIN-S3CRET",
    "smtp_password": "SMTP-S3CRET",
}


@pytest.mark.parametrize("show", [repr, str, format], ids=["repr", "str", "format"])
def test_secrets_are_never_shown_by_the_settings(monkeypatch: pytest.MonkeyPatch, show):
    """The AMQP URL (it holds a password), the admin token and the SMTP password stay hidden."""
    for name, secret in SECRETS.items():
        monkeypatch.setenv(f"S2SQ_{name.upper()}", secret)
    settings = load_settings()
    assert plain(settings.admin_token) == "ADMIN-S3CRET"
    shown = show(settings)
    for secret in ("AMQP-S3CRET", "ADMIN-S3CRET", "SMTP-S3CRET"):
        assert secret not in shown


def test_settings_are_frozen():
    """Built once by the CLI and passed down: nobody changes them on the way."""
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.prefix = "other"  # type: ignore[misc]


def test_settings_can_be_built_directly_with_the_defaults():
    """`Settings()` is what `load_settings()` gives without a file."""
    assert Settings() == load_settings()


def test_a_list_of_amqp_urls_is_read_in_order_spaces_and_empty_entries_dropped(
    monkeypatch: pytest.MonkeyPatch,
):
    """S2SQ_AMQP_URL may name the nodes of one cluster, comma-separated (SPEC section 9)."""
    monkeypatch.setenv("S2SQ_AMQP_URL", " amqp://u:p@n1:5681/ ,amqp://u:p@n2:5682/,, "
                                        "amqps://u:p@n3/v ")
    settings = load_settings()
    assert settings.amqp_urls == ("amqp://u:p@n1:5681/", "amqp://u:p@n2:5682/",
                                  "amqps://u:p@n3/v")
    assert plain(settings.amqp_url) == ",".join(settings.amqp_urls)


def test_a_single_amqp_url_is_a_list_of_one():
    """The default, one local broker, is a list of one URL."""
    assert load_settings().amqp_urls == ("amqp://guest:guest@127.0.0.1:5672/",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "Value error, needs at least one amqp:// or amqps:// URL"),
        (" , ", "Value error, needs at least one amqp:// or amqps:// URL"),
        ("http://u:S3CRET@n1/", "Value error, the URL does not start with amqp:// or amqps://"),
        ("amqp://u:S3CRET@n1/,n2:5672",
         "Value error, URL 2 of 2 does not start with amqp:// or amqps://"),
        ("amqp://u:S3CRET@n1:port/", "Value error, the URL is malformed (bad port?)"),
        ("amqp://u:S3CRET@/", "Value error, the URL has no host"),
    ],
)
def test_a_bad_amqp_url_list_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, text, message
):
    """The message says which URL and why, never the URL itself: it may hold a password."""
    monkeypatch.setenv("S2SQ_AMQP_URL", text)
    with pytest.raises(ValidationError) as info:
        load_settings()
    assert only_error(info.value) == (("amqp_url",), message)
    assert "S3CRET" not in only_error(info.value)[1]


def test_several_amqp_urls_stay_hidden_by_the_settings(monkeypatch: pytest.MonkeyPatch):
    """No password of any node shows in the settings' repr."""
    monkeypatch.setenv("S2SQ_AMQP_URL", "amqp://d:PW-ONE@n1/,amqp://d:PW-TWO@n2/")
    shown = repr(load_settings())
    assert "PW-ONE" not in shown
    assert "PW-TWO" not in shown


@pytest.mark.parametrize(
    ("text", "processes", "count"),
    [
        ("1", 1, 1),
        ("2", 2, 2),
        (" 3 ", 3, 3),
        ("auto", "auto", len(os.sched_getaffinity(0))),
    ],
)
def test_processes_is_a_count_or_auto_for_one_per_core(
    monkeypatch: pytest.MonkeyPatch, text, processes, count
):
    """S2SQ_PROCESSES takes a number of processes, or `auto`: the cores we may run on."""
    monkeypatch.setenv("S2SQ_PROCESSES", text)
    settings = load_settings()
    assert settings.processes == processes
    assert settings.process_count == count


def test_processes_from_a_toml_file_may_be_a_number_or_auto(tmp_path: Path):
    """`processes = 2` and `processes = "auto"` both read."""
    config = tmp_path / "s2s.toml"
    config.write_text("processes = 2\n")
    assert load_settings(config).process_count == 2
    config.write_text('processes = "auto"\n')
    assert load_settings(config).processes == "auto"


@pytest.mark.parametrize("text", ["0", "-1", "many", "2.5", "257", ""])
def test_a_process_count_that_is_not_a_positive_number_or_auto_is_refused(
    monkeypatch: pytest.MonkeyPatch, text
):
    """Nothing silently becomes one process."""
    monkeypatch.setenv("S2SQ_PROCESSES", text)
    with pytest.raises(ValidationError):
        load_settings()


def test_settings_go_to_a_worker_process_whole_secrets_included(tmp_path: Path):
    """What `dump_json` writes builds the same settings again, passwords and paths too."""
    settings = load_settings(amqp_url="amqp://u:secret@rabbit:5672/v", admin_token="adm",
                             smtp_password="pw", clients_file=tmp_path / "c.toml",
                             processes="auto", nonblocking_retry_delays="1,2")
    again = Settings(**orjson.loads(settings.dump_json()))
    assert again == settings
    assert plain(again.amqp_url) == "amqp://u:secret@rabbit:5672/v"
