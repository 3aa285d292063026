"""``ckpt-inspector [PATH...]`` starts the window; without a display, or with a word that is
neither a command nor a file, it says so in one line (exit 2) instead of aborting in Qt."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import ROOT


def _run(*args: str, display: bool, **extra: str) -> subprocess.CompletedProcess:
    """The command in an environment with a display (Qt's offscreen one) or none at all:
    no DISPLAY, no WAYLAND_DISPLAY, no QT_QPA_PLATFORM, as over ssh or in a container."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["XDG_RUNTIME_DIR"] = env.get("XDG_CONFIG_HOME", "/nonexistent")  # no wayland-0 here
    if display:
        env["QT_QPA_PLATFORM"] = "offscreen"
        env["CKPT_INSPECTOR_QUIT_AFTER_MS"] = "5000"  # were a window to start, it ends
    env.update(extra)
    return subprocess.run([sys.executable, "-m", "ckpt_inspector", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def _one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("ckpt-inspector: ") and "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11/Wayland only")
def test_without_a_display_the_app_says_so_and_points_at_info(tensors_file):
    path = str(tensors_file[0])
    for args in ([path], []):
        line = _one_line(_run(*args, display=False))
        assert "no display" in line and "ckpt-inspector info" in line, line
    line = _one_line(_run(path, display=False, QT_QPA_PLATFORM="xcb"))
    assert "no display" in line, line
    # a headless Qt platform needs no display: the window starts (and is told to end)
    shown = _run(path, display=False, QT_QPA_PLATFORM="offscreen",
                 CKPT_INSPECTOR_EXIT_WHEN_SHOWN="1")
    assert shown.returncode == 0 and shown.stdout.startswith("shown "), shown.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11/Wayland only")
def test_a_display_that_does_not_answer_is_said_too(tensors_file, tmp_path):
    """DISPLAY set to a server that is gone (an ended ssh forwarding, a stopped Xvfb): Qt
    would abort (exit 134); a display that answers still starts the window."""
    import socket

    with socket.socket() as sock:  # a free port, nothing listening: localhost:N-6000
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = {"DISPLAY": f"127.0.0.1:{port - 6000}"} if port > 6000 else {"DISPLAY": ":4242"}
    for env in (gone, {"DISPLAY": ":4242"}, {"WAYLAND_DISPLAY": "wayland-gone",
                                             "XDG_RUNTIME_DIR": str(tmp_path)}):
        line = _one_line(_run(str(tensors_file[0]), display=False, **env))
        assert "no display" in line and "nothing answers" in line and \
            "ckpt-inspector info" in line, line
    # something listening on the X socket's address: left to Qt (here: told to be headless)
    from ckpt_inspector.cli._app import display_problem

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "wayland-here"))
        server.listen()
        assert display_problem({"WAYLAND_DISPLAY": "wayland-here",
                                "XDG_RUNTIME_DIR": str(tmp_path)}) == ""
    assert display_problem({"DISPLAY": "not a display"}) == ""  # unknown: Qt decides
    assert display_problem({"DISPLAY": "somehost.invalid:0"}) == ""  # not looked up
    assert display_problem({"DISPLAY": ":4242", "QT_QPA_PLATFORM": "offscreen"}) == ""
    # ":N" with no Unix socket: libxcb tries TCP 6000+N (an X server on Windows under WSL)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        if port > 6000:
            assert display_problem({"DISPLAY": f":{port - 6000}"}) == ""
    # the default Wayland socket, named as such
    (tmp_path / "wayland-0").touch()  # a file, not a listening socket
    line = display_problem({"XDG_RUNTIME_DIR": str(tmp_path)})
    assert "wayland-0" in line and "WAYLAND_DISPLAY=" not in line, line


@pytest.mark.parametrize("display", [False, True])
def test_an_unknown_word_is_a_usage_error_with_a_suggestion(tensors_file, display):
    path = str(tensors_file[0])
    line = _one_line(_run("inf", path, display=display))
    assert "'inf'" in line and "did you mean info?" in line, line
    line = _one_line(_run("sacn", path, display=display))
    assert "did you mean scan?" in line, line
    line = _one_line(_run("frobnicate", display=display))
    assert "'frobnicate'" in line and "did you mean info?" in line, line
    line = _one_line(_run(path, "no-such-file.pt", display=display))
    assert "no-such-file.pt" in line and "ckpt-inspector info" in line, line
    line = _one_line(_run("--frobnicate", display=display))
    assert "--frobnicate" in line, line
    line = _one_line(_run("--json", "info", path, display=display))
    assert "--json goes after the command: ckpt-inspector info --json" in line, line


def test_an_unknown_word_with_json_answers_in_json(tensors_file):
    import json

    proc = _run("inf", str(tensors_file[0]), "--json", display=False)
    assert proc.returncode == 2
    obj = json.loads(proc.stdout)
    assert obj["exit_code"] == 2 and "did you mean info?" in obj["error"]


def test_with_a_display_a_file_opens_in_the_window(tensors_file, tmp_path):
    shown = _run(str(tensors_file[0]), display=True, CKPT_INSPECTOR_EXIT_WHEN_SHOWN="1",
                 XDG_CONFIG_HOME=str(tmp_path))
    assert shown.returncode == 0 and shown.stdout.startswith("shown "), shown.stderr[-2000:]
