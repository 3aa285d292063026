"""ckpt-inspector's own commands, run as child processes.

Anything that imports torch (the demo, loading with torch, exports, device
discovery) runs in a child: importing torch holds the GIL for about a second and
would freeze the window.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import asdict
from typing import Any

from PySide6.QtCore import QObject, QProcess, Signal

from ckpt_inspector.core.progress import Progress, parse_line


def cli_command(*args: str) -> list[str]:
    """``ckpt-inspector ARGS`` as a command line (from a bundle, the executable itself)."""
    if getattr(sys, "frozen", False):
        return [sys.executable, *args]
    return [sys.executable, "-m", "ckpt_inspector", *args]


class CommandFailed(Exception):
    """A command the window ran failed: its one line for people (the last of stderr, what
    the command line says, e.g. what to install), and all it wrote on stderr."""

    def __init__(self, line: str, stderr: str = ""):
        super().__init__(line)
        self.stderr = stderr


def run_cli(*args: str, timeout: float = 600) -> str:
    """Run a command to the end (on a worker thread) and return its stdout; raise
    :class:`CommandFailed` with its last line of stderr when it fails."""
    proc = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise CommandFailed(lines[-1].removeprefix("ckpt-inspector: ") if lines
                            else f"{args[0]} failed with exit code {proc.returncode}",
                            proc.stderr)
    return proc.stdout


class CliProcess(QObject):
    """A command run as a child with ``--progress``: JSON progress lines, then one JSON
    result, read with :func:`ckpt_inspector.core.progress.parse_line`. ``progress(dict)``
    (a :class:`~ckpt_inspector.core.progress.Progress` as a dict: stage, done, total,
    detail), then ``done(dict)`` or ``failed(str)``; :meth:`kill` drops it silently. A
    command whose answer is also in its exit code (``check``: 1 when it would not load)
    names the codes that still carry a result in ``ok_codes``."""

    progress = Signal(dict)
    done = Signal(dict)
    failed = Signal(str)

    def __init__(self, args: list[str], parent: QObject | None = None,
                 ok_codes: tuple[int, ...] = (0,)):
        super().__init__(parent)
        self._ok_codes = ok_codes
        self._buf = b""
        self._result: dict | None = None
        self._killed = False
        self.proc = QProcess(self)
        self.proc.readyReadStandardOutput.connect(self._read)
        self.proc.finished.connect(self._finished)
        self.proc.errorOccurred.connect(self._error)
        cmd = cli_command(*args)
        self.proc.start(cmd[0], cmd[1:])

    def _read(self) -> None:
        self._buf += bytes(self.proc.readAllStandardOutput())
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            msg = parse_line(line)
            if isinstance(msg, Progress):
                self.progress.emit(asdict(msg))
            elif msg is not None:
                self._result = msg

    def _finished(self, code: int, _status: Any) -> None:
        if self._killed:
            self.deleteLater()
            return
        self._read()
        if code in self._ok_codes and self._result is not None:
            self.done.emit(self._result)
        else:
            err = bytes(self.proc.readAllStandardError()).decode(errors="replace").strip()
            last = err.splitlines()[-1] if err else f"exit code {code}"
            self.failed.emit(last.removeprefix("ckpt-inspector: "))

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and not self._killed:
            self.failed.emit("the command could not start")

    def kill(self) -> None:
        self._killed = True
        if self.proc.state() != QProcess.ProcessState.NotRunning:
            self.proc.kill()  # deleted once it has gone
        else:
            self.deleteLater()
