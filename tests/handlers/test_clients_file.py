"""The clients file: client ids, loading, and readable errors that never show a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.clients import (
    ClientsFileError,
    InvalidClientId,
    load_clients_file,
    validate_client_id,
)

SECRET = "wh-SECRET-91b2"
GOOD = f"""
[clients.acme]
name = "Acme Ltd"
notify_emails = ["ops@acme.example"]
console_token_sha256 = "{"AB" * 32}"
webhook_url = "https://hooks.acme.example/s2s"
webhook_secret = "{SECRET}"
allowed_image_hosts = ["CDN.acme.example"]

[clients.acme.channel]
kind = "http"
base_url = "https://shop.acme.example/api"
token = "{SECRET}"
timeout = 12.5

[clients.acme.catalog]
base_url = "https://catalog.internal/acme"

[clients.42]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clients.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ClientsFileError) as info:
        load_clients_file(write(tmp_path, text))
    return str(info.value)


@pytest.mark.parametrize(
    ("client_id", "valid"),
    [
        ("acme", True),
        ("42", True),
        ("A-z_0-9", True),
        ("x" * 64, True),
        ("", False),
        ("x" * 65, False),
        ("a.b", False),
        ("a b", False),
        ("a/b", False),
        ("café", False),
        ("ａｃｍｅ", False),
        ("acme\n", False),
    ],
)
def test_a_client_id_is_1_to_64_ascii_letters_digits_dashes_or_underscores(client_id, valid):
    """Only `^[A-Za-z0-9_-]{1,64}$` passes, with no trailing newline sneaking past `$`."""
    if valid:
        assert validate_client_id(client_id) == client_id
    else:
        with pytest.raises(InvalidClientId):
            validate_client_id(client_id)


def test_an_invalid_client_id_error_quotes_the_id_and_the_rule():
    """The message names the id and says exactly which characters are allowed."""
    with pytest.raises(InvalidClientId) as info:
        validate_client_id("a.b")
    assert str(info.value) == (
        "invalid client id 'a.b': use 1 to 64 characters from A-Z a-z 0-9 _ -"
    )


def test_an_invalid_client_id_is_shown_escaped_and_cut_to_80_characters():
    """Control characters are escaped and a long id is cut, so the message stays one line."""
    with pytest.raises(InvalidClientId) as info:
        validate_client_id("bad\nid" + "x" * 100)
    shown = str(info.value).split("'")[1]
    assert "\n" not in str(info.value)
    assert shown.startswith("bad\\nid")
    assert shown == ("bad\\nid" + "x" * 100)[:81] + "…"


def test_a_good_clients_file_loads_every_client_with_its_connections(tmp_path):
    """Clients come back in file order with typed, normalised settings."""
    clients = load_clients_file(write(tmp_path, GOOD))
    assert list(clients) == ["acme", "42"]
    acme = clients["acme"]
    assert acme.name == "Acme Ltd"
    assert acme.console_token_sha256 == "ab" * 32
    assert acme.allowed_image_hosts == ["cdn.acme.example"]
    assert acme.channel is not None
    assert acme.channel.base_url == "https://shop.acme.example/api"
    assert acme.channel.token is not None
    assert acme.channel.token.get_secret_value() == SECRET
    assert acme.channel.timeout == 12.5
    assert acme.catalog is not None
    assert acme.catalog.kind == "http"
    assert acme.source is None
    assert clients["42"].channel is None


def test_secrets_do_not_appear_in_the_repr_of_loaded_settings(tmp_path):
    """Tokens and webhook secrets are SecretStr: printing the settings hides them."""
    clients = load_clients_file(write(tmp_path, GOOD))
    assert SECRET not in repr(clients)
    assert SECRET not in str(clients)


def test_an_empty_clients_file_means_no_clients(tmp_path):
    """A file with no [clients.*] table is valid and lists nobody."""
    assert load_clients_file(write(tmp_path, "# nobody yet\n")) == {}


def test_a_missing_clients_file_is_reported_with_its_path(tmp_path):
    """The error names the file that is not there."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ClientsFileError) as info:
        load_clients_file(path)
    assert str(info.value) == f"clients file {path}: no such file"


def test_bad_toml_is_reported_with_the_line(tmp_path):
    """A syntax error says it is not TOML and on which line, without quoting the content."""
    message = load_error(tmp_path, f'[clients.acme]\nname = "Acme"\ntoken = {SECRET}\n')
    assert message.startswith(f"clients file {tmp_path / 'clients.toml'}: not valid TOML: ")
    assert "line 3" in message
    assert SECRET not in message


def test_an_invalid_client_id_in_the_file_is_reported(tmp_path):
    """A table name that is not a valid client id is refused with the id rule."""
    message = load_error(tmp_path, '[clients."acme shop"]\nname = "x"\n')
    assert message == (
        f"clients file {tmp_path / 'clients.toml'}: invalid client id 'acme shop': "
        "use 1 to 64 characters from A-Z a-z 0-9 _ -"
    )


def test_an_unknown_key_is_an_error_naming_its_full_path(tmp_path):
    """A misspelt setting is refused, not silently ignored."""
    message = load_error(tmp_path, '[clients.acme.chanel]\nbase_url = "https://x.example"\n')
    assert message == (
        f"clients file {tmp_path / 'clients.toml'}: "
        "clients.acme.chanel: unknown setting (misspelt?)"
    )


def test_an_unknown_top_level_key_is_an_error(tmp_path):
    """Only [clients.<id>] tables belong in the file."""
    message = load_error(tmp_path, 'client = "acme"\n')
    assert message.endswith("client: unknown setting (only [clients.<id>] tables belong here)")


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ('base_url = "ftp://shop.example"', "must be an http:// or https:// URL with a host"),
        ('base_url = "shop.example/api"', "must be an http:// or https:// URL with a host"),
        (f'base_url = "https://u:{SECRET}@shop.example"', "must not contain credentials"),
        ('base_url = "https://shop.example/api?key=1"', "must not have a query string"),
        ('base_url = "https://shop.example:99999"', "has a port outside 1-65535"),
        ('base_url = "https://shop.example"\nkind = "shopify"', "Input should be 'http' or"),
        ('base_url = "https://shop.example"\ntimeout = 0', "greater than 0"),
        ('kind = "http"', "clients.acme.channel.base_url: required"),
    ],
)
def test_a_bad_connection_is_reported_with_the_field_path(tmp_path, section, expected):
    """Each problem names `clients.<id>.<section>.<field>` and what is wrong, never the value."""
    message = load_error(tmp_path, f"[clients.acme.channel]\n{section}\n")
    assert "clients.acme.channel." in message
    assert expected in message
    assert SECRET not in message
    assert "\n" not in message


def test_a_wrongly_typed_secret_is_reported_without_its_value(tmp_path):
    """A token of the wrong type is named by its path; the value is not quoted."""
    text = f'[clients.acme.channel]\nbase_url = "https://s.example"\ntoken = ["{SECRET}"]\n'
    message = load_error(tmp_path, text)
    assert "clients.acme.channel.token: " in message
    assert SECRET not in message


def test_a_console_token_hash_must_be_64_hex_digits(tmp_path):
    """A console token itself (rather than its sha256) is refused, and not echoed."""
    message = load_error(tmp_path, f'[clients.acme]\nconsole_token_sha256 = "{SECRET}"\n')
    assert "clients.acme.console_token_sha256: must be 64 hex digits" in message
    assert SECRET not in message


def test_a_webhook_url_without_a_secret_is_refused(tmp_path):
    """Webhooks are always signed, so a URL needs the secret beside it."""
    message = load_error(tmp_path, '[clients.acme]\nwebhook_url = "https://h.example/s2s"\n')
    assert message.endswith(
        "clients.acme: webhook_url needs webhook_secret: webhooks are always signed"
    )


def test_a_webhook_url_with_credentials_is_refused_without_showing_them(tmp_path):
    """`https://user:secret@host/...` is refused naming the client and the field, not the secret:
    the password would be quoted in every error, event, log line and mail about the webhook."""
    text = (f'[clients.acme]\nwebhook_url = "https://hooks:{SECRET}@h.example/s2s"\n'
            f'webhook_secret = "other"\n')
    message = load_error(tmp_path, text)
    assert message.endswith(
        "clients.acme.webhook_url: must not contain credentials: webhooks are signed with "
        "webhook_secret"
    )
    assert SECRET not in message
    assert "hooks:" not in message


def test_a_client_name_must_be_one_line(tmp_path):
    """The name goes into mail subjects: a line break there would add a header."""
    message = load_error(tmp_path, '[clients.acme]\nname = "Acme\\r\\nBcc: x@y.example"\n')
    assert message.endswith("clients.acme.name: must be one line of printable text")


def test_allowed_image_hosts_take_names_addresses_and_ports(tmp_path):
    """`host`, `host:port`, an IPv4 or IPv6 address (with a port in brackets), normalised."""
    text = ('[clients.acme]\nallowed_image_hosts = ["CDN.acme.example", "cdn.acme.example:8443", '
            '"10.0.0.5", "::1", "[::1]:8080"]\n')
    clients = load_clients_file(write(tmp_path, text))
    assert clients["acme"].allowed_image_hosts == [
        "cdn.acme.example", "cdn.acme.example:8443", "10.0.0.5", "[::1]", "[::1]:8080"]


@pytest.mark.parametrize(
    "entry", ["https://cdn.acme.example", "cdn.acme.example/img", "cdn:0", "cdn:http",
              "[::1]8080", "", "user@cdn.acme.example"],
)
def test_an_allowed_image_host_that_is_not_a_host_is_refused(tmp_path, entry):
    message = load_error(tmp_path, f'[clients.acme]\nallowed_image_hosts = ["{entry}"]\n')
    assert message.endswith(
        "clients.acme.allowed_image_hosts: each entry must be a host name like "
        "cdn.acme.example, or host:port, not a URL"
    )


def test_list_entries_are_named_by_index(tmp_path):
    """An error inside a list shows which entry, like `notify_emails[1]`."""
    message = load_error(tmp_path, '[clients.acme]\nnotify_emails = ["a@b.example", 7]\n')
    assert "clients.acme.notify_emails[1]: " in message


@pytest.mark.parametrize("section", ["source", "warehouse"])
def test_magento2_is_refused_for_back_office_sections(tmp_path, section):
    """Magento 2 is a sales channel (or catalog); orders and fulfillments go to generic APIs."""
    message = load_error(tmp_path, f'[clients.acme.{section}]\nkind = "magento2"\n'
                                   'base_url = "https://m2.example"\n')
    assert message.endswith(
        f"clients.acme: {section}.kind: magento2 is a sales channel or catalog kind; the "
        f'{section} speaks the generic API (kind = "http")'
    )


def test_magento2_is_accepted_for_the_channel_and_the_catalog(tmp_path):
    """Both product targets may be Magento stores."""
    text = "".join(f'[clients.acme.{s}]\nkind = "magento2"\nbase_url = "https://m2.example"\n'
                   for s in ("channel", "catalog"))
    config = load_clients_file(write(tmp_path, text))["acme"]
    assert config.channel is not None
    assert config.catalog is not None
    assert (config.channel.kind, config.catalog.kind) == ("magento2", "magento2")
