"""`s2s-queue types`: the registered instruction types, plug-ins included, without a broker."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import handlers
from daemon.faces.cli import main
from handlers import BUILTIN_HANDLERS, ENTRY_POINT_GROUP
from handlers.reference import markdown


@pytest.fixture
def no_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if no plug-in were installed (a developer may have installed examples/plugin)."""
    monkeypatch.setattr(handlers, "entry_points", lambda *, group: [])


@pytest.mark.usefixtures("no_plugins")
def test_types_lists_every_type_with_its_queue(capsys):
    """One line per type: name, default queue, what it does."""
    assert main(["types"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [[h.type, h.queue] for h in BUILTIN_HANDLERS]
    assert lines[0].endswith("does nothing, or fails as asked")


@pytest.mark.usefixtures("no_plugins")
def test_types_markdown_prints_the_reference(capsys):
    """`--markdown` is the same reference as docs/types.md, for what is installed."""
    assert main(["types", "--markdown"]) == 0
    assert capsys.readouterr().out == markdown(BUILTIN_HANDLERS)


def test_a_broken_plugin_is_one_line_and_exit_2(capsys, monkeypatch: pytest.MonkeyPatch):
    """The entry point and the import error, nothing else."""
    point = EntryPoint("bad", "no_such_module_s2s:HANDLERS", ENTRY_POINT_GROUP)
    monkeypatch.setattr(handlers, "entry_points", lambda *, group: [point])
    assert main(["types"]) == 2
    assert capsys.readouterr().err.startswith(
        "s2s-queue: handler plug-in 'bad = no_such_module_s2s:HANDLERS' (s2s_queue.handlers) "
        "failed to load: ModuleNotFoundError"
    )
