"""``python3 dev.py app``: the launcher passes SIGTERM on to the app it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from support import ROOT

# dev.py as `python3 dev.py app FILE` runs it, with the set-up step (a .venv of its own,
# pip) replaced by this interpreter
LAUNCH = ("import pathlib, sys; sys.path.insert(0, {root!r}); import dev\n"
          "dev.setup = lambda: pathlib.Path(sys.executable)\n"
          "sys.exit(dev.main(['app', {path!r}]))\n")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_sigterm_to_dev_py_app_ends_the_app(tensors_file, tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path),
           "CKPT_INSPECTOR_QUIT_AFTER_MS": "90000"}  # were it left running, it ends
    code = LAUNCH.format(root=str(ROOT), path=str(tensors_file[0]))
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        launcher = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=err)
    app = None
    try:
        deadline = time.monotonic() + 60
        while app is None and time.monotonic() < deadline:
            app = next(iter(_children(launcher.pid)), None)
            time.sleep(0.1)
        assert app is not None, "the app never started"
        time.sleep(3)  # the window is up, or nearly
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(app) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(app), "the app outlived its launcher"
        assert code == 128 + signal.SIGTERM, log.read_text()[-2000:]
    finally:
        if app is not None and _alive(app):
            os.kill(app, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
