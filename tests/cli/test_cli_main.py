"""``ckpt-inspector`` itself: how every command ends on Ctrl-C."""

from __future__ import annotations


def test_ctrl_c_in_any_command_exits_130_with_one_line(tensors_file, monkeypatch, capsys):
    from ckpt_inspector import cli

    def interrupted(_args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "stats", interrupted)
    assert cli.main(["stats", str(tensors_file)]) == 130
    err = capsys.readouterr().err
    assert err == "ckpt-inspector stats: interrupted\n"
