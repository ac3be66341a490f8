"""parse_control: a control message's body to an action and its arguments (SPEC §5)."""

from __future__ import annotations

import pytest

from daemon.faces.control import parse_control, reply_to_allowed
from daemon.operations.admin import OperationError


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"retry acme", "control message is not valid JSON", id="not-json"),
        pytest.param(b"", "control message is not valid JSON", id="empty"),
        pytest.param(b"\xff", "control message is not valid JSON", id="not-utf8"),
        pytest.param(b"[]", "control message is not a JSON object", id="list"),
        pytest.param(b'"retry"', "control message is not a JSON object", id="string"),
        pytest.param(b"null", "control message is not a JSON object", id="null"),
        pytest.param(b"{}", "control message has no action", id="no-action"),
        pytest.param(b'{"action": ""}', "control message has no action", id="empty-action"),
        pytest.param(b'{"action": 3}', "control message has no action", id="number-action"),
        pytest.param(
            b'{"action": "status", "client_id": 42}', "client_id must be a string", id="client"
        ),
        pytest.param(
            b'{"action": "retry", "client_id": "a", "message_id": ["m"]}',
            "message_id must be a string",
            id="message-id",
        ),
        pytest.param(
            b'{"action": "skip", "client_id": "a", "reason": {"why": 1}}',
            "reason must be a string",
            id="reason",
        ),
        pytest.param(
            b'{"action": "retry_failed_group", "group": 7}', "group must be a string",
            id="group",
        ),
        pytest.param(b'{"action": "pause", "client_id": "a", "via": "email"}',
                     "via must be one of console, api, cli, control", id="via"),
        pytest.param(b'{"action": "retry", "client_id": "a", "forwarded": "yes"}',
                     "forwarded must be true or false", id="forwarded"),
        pytest.param(b'{"action": "pause", "client_id": "a", "via": null}',
                     "via must be one of console, api, cli, control", id="null-via"),
    ],
)
def test_a_malformed_control_message_is_refused_with_a_reason(body, error):
    """The reason is what the daemon answers in `{"ok": false, "error": ...}`."""
    with pytest.raises(OperationError) as info:
        parse_control(body, None)
    assert str(info.value) == error


def test_a_full_control_message_gives_its_action_and_every_argument():
    """client_id, message_id, reason and actor become keyword arguments."""
    body = (
        b'{"action": "retry", "client_id": "42", "message_id": "m-1",'
        b' "actor": "alice", "reason": "fixed the SKU"}'
    )
    assert parse_control(body, None) == (
        "retry",
        {"client_id": "42", "message_id": "m-1", "reason": "fixed the SKU", "actor": "alice",
         "via": "control"},
    )


def test_absent_and_null_arguments_are_left_out_and_unknown_fields_ignored():
    """Only what was given is passed on; extra fields do no harm."""
    body = b'{"action": "status", "client_id": null, "colour": "red"}'
    assert parse_control(body, None) == ("status", {"actor": "unknown", "via": "control"})


@pytest.mark.parametrize(
    ("actor_field", "user_id", "actor"),
    [
        pytest.param('"alice"', "bob", "bob", id="user-id-beats-field"),
        pytest.param(None, "bob", "bob", id="user-id-only"),
        pytest.param('"alice"', None, "alice", id="field-only"),
        pytest.param('"alice"', "", "alice", id="empty-user-id"),
        pytest.param(None, None, "unknown", id="neither"),
        pytest.param('""', None, "unknown", id="empty-field"),
        pytest.param("5", None, "unknown", id="number-field"),
        pytest.param("null", None, "unknown", id="null-field"),
    ],
)
def test_the_actor_is_the_validated_user_id_else_the_actor_field(
    actor_field, user_id, actor
):
    """RabbitMQ checks `user_id`, so it wins; with neither the actor is "unknown"."""
    extra = "" if actor_field is None else f', "actor": {actor_field}'
    body = f'{{"action": "pause", "client_id": "42"{extra}}}'.encode()
    assert parse_control(body, user_id) == ("pause", {"client_id": "42", "actor": actor,
                                                      "via": "control"})


@pytest.mark.parametrize(
    "action",
    ["retry", "skip", "pause", "resume", "register", "retry_failed", "skip_failed",
     "replay_unrouted", "status", "no_such_action"],
)
def test_any_action_name_parses_and_is_judged_by_dispatch(action):
    """parse_control checks the shape only; whether the action exists is dispatch's call."""
    body = f'{{"action": "{action}"}}'.encode()
    assert parse_control(body, "admin") == (action, {"actor": "admin", "via": "control"})


@pytest.mark.parametrize("via", ["console", "api", "cli", "control"])
def test_a_control_message_names_the_face_it_came_through(via):
    """The CLI says `cli`, a forwarded retry its first face's; the audit trail records it."""
    body = f'{{"action": "pause", "client_id": "42", "via": "{via}"}}'.encode()
    assert parse_control(body, None) == ("pause", {"client_id": "42", "actor": "unknown",
                                                   "via": via})


@pytest.mark.parametrize(
    ("reply_to", "allowed"),
    [
        pytest.param(None, True, id="no-answer-wanted"),
        pytest.param("", True, id="empty"),
        pytest.param("amq.gen-JzTY20BRgKO-HjmUJj0wLg", True, id="server-named"),
        pytest.param("amq.rabbitmq.reply-to", True, id="direct-reply-to"),
        pytest.param("amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNjU2NTIyNQAAAUcAAAAAZRA=", True,
                     id="direct-reply-to-as-delivered"),
        pytest.param("s2s.state.snapshot", False, id="snapshot-pointer"),
        pytest.param("s2s.blocking.acme", False, id="client-queue"),
        pytest.param("s2s.notify.send", False, id="notifications"),
        pytest.param("amq.rabbitmq.reply-tox", False, id="reply-to-lookalike"),
        pytest.param("amq.gen", False, id="gen-without-dash"),
        pytest.param("my.replies", False, id="named-by-the-caller"),
    ],
)
def test_answers_go_only_to_server_named_queues_or_direct_reply_to(reply_to, allowed):
    """Issue 12, hole 3: a reply_to naming an internal queue would be written with the
    daemon's permissions; only queues the broker named for the caller are answered."""
    assert reply_to_allowed(reply_to) is allowed
