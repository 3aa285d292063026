"""``ckpt-inspector`` itself: how every command ends on Ctrl-C, and on each error."""

from __future__ import annotations

import pytest

from ckpt_inspector.cli._errors import report
from ckpt_inspector.core.errors import (
    CheckpointError,
    ExportError,
    ExportUsageError,
    SourceDataError,
)
from ckpt_inspector.core.ops.torch_load import TrustError


def test_ctrl_c_in_any_command_exits_130_with_one_line(tensors_file, monkeypatch, capsys):
    from ckpt_inspector import cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "stats", interrupted)
    assert cli.main(["stats", str(tensors_file)]) == 130
    err = capsys.readouterr().err
    assert err == "ckpt-inspector stats: interrupted\n"


def test_each_error_ends_in_one_line_and_its_exit_code(capsys):
    """The table in cli/_errors.py: the line and the exit code of each error, by command."""
    cases = [
        (ExportUsageError("bad key"), "export", 2, "p: not exported: bad key"),
        (ExportUsageError("bad key"), "arch", 3, "p: bad key"),
        (SourceDataError("cut"), "export", 3, "p: cut"),
        (ExportError("no"), "export", 1, "p: export failed: no"),
        (CheckpointError("truncated"), "export", 3, "p: truncated"),
        (CheckpointError(""), "info", 3, "p: CheckpointError"),
        (TrustError("needs --trust"), "export", 1, "p: not exported: needs --trust"),
        (TrustError("run code"), "load", 1, "p: not loaded: run code"),
        (RuntimeError("cuda\nmore"), "export", 1, "p: export failed: RuntimeError: cuda"),
        (RuntimeError("no cuda"), "load", 3, "p: torch refused it: no cuda"),
    ]
    for err, command, code, line in cases:
        assert report(err, "p", command) == code, (err, command)
        assert capsys.readouterr().err == f"ckpt-inspector: {line}\n"
    with pytest.raises(ValueError):
        report(ValueError("a bug"), "p", "info")
