"""How a command ends: exit codes, and every error as one line on stderr, in one table.

Exit codes: 0 ok / safe, 1 not safe (``export``: failed or not verified; ``diff``:
different), 2 usage, 3 unreadable input (one line on stderr naming the file and the
problem, never a traceback), 130 / 143 after Ctrl-C / SIGTERM.

With ``--json`` on the command line (:func:`answer_in_json`), every exit prints exactly one
JSON object on stdout: the command's result or, when it failed before printing one,
``{"path"?, "error", "exit_code"}`` with the line stderr gets.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from ckpt_inspector.core.errors import (
    CheckpointError,
    ExportError,
    ExportUsageError,
    SourceDataError,
)
from ckpt_inspector.core.extras import missing
from ckpt_inspector.core.ops.torch_load import TrustError

EXIT_OK, EXIT_NOT_SAFE, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

PROG = "ckpt-inspector"

# (error, the command it applies to (None: any), exit code (None: the error's own
# exit_code), the line after "ckpt-inspector: "). The first row that matches is used.
TABLE: tuple[tuple[type[BaseException], str | None, int | None, str], ...] = (
    (TrustError, "load", EXIT_NOT_SAFE, "{path}: not loaded: {err}"),
    (TrustError, "export", EXIT_NOT_SAFE, "{path}: not exported: {err}"),
    (SourceDataError, "export", None, "{path}: {err}"),
    (ExportUsageError, "export", None, "{path}: not exported: {err}"),
    (ExportError, "export", None, "{path}: export failed: {err}"),
    (CheckpointError, None, EXIT_UNREADABLE, "{path}: {err}"),
    # torch's own message is the useful one
    (Exception, "load", EXIT_UNREADABLE, "{path}: torch refused it: {err}"),
    # torch's, onnx's: one line, never a traceback
    (Exception, "export", EXIT_NOT_SAFE, "{path}: export failed: {kind}: {first_line}"),
)


def fail(message: str, code: int, path: str | None = None) -> int:
    """``ckpt-inspector: MESSAGE`` on stderr (after what stdout holds); returns ``code``.
    With ``--json``, also what the JSON answer says if the command prints none."""
    sys.stdout.flush()
    print(f"{PROG}: {message}", file=sys.stderr)
    note(message, path)
    return code


def note(message: str, path: str | None = None) -> None:
    """What the ``--json`` answer says if the command fails without printing one (the line
    on stderr is the caller's)."""
    if _answer is not None:
        _answer.error, _answer.path = message, path


def usage(message: str) -> int:
    return fail(message, EXIT_USAGE)


def report(err: BaseException, path: str, command: str | None = None) -> int:
    """The table's line for ``err`` on stderr; its exit code. An error no row covers is
    raised again. An optional part that is not installed (torch, on a light install) is a
    usage error whose line says what to install."""
    needs = missing(err)
    if needs is not None:
        return fail(f"{path}: {command or 'this'} {needs}", EXIT_USAGE, path)
    for kind, where, code, line in TABLE:
        if isinstance(err, kind) and where in (None, command):
            text = str(err) or type(err).__name__
            first = (str(err).strip().splitlines() or [""])[0][:300]
            return fail(line.format(path=path, err=text, kind=type(err).__name__,
                                    first_line=first),
                        code if code is not None else getattr(err, "exit_code", EXIT_NOT_SAFE),
                        path)
    raise err


def unreadable(path: str, err: BaseException) -> int:
    """``ckpt-inspector: PATH: what is wrong``, exit 3."""
    return fail(f"{path}: {str(err) or type(err).__name__}", EXIT_UNREADABLE, path)


def interrupted(command: str, code: int | None = None) -> int:
    """Ctrl-C (130) or SIGTERM (``code`` 143) in info, scan, stats…: one line, no
    traceback, and the --json answer with the exit status."""
    what = "terminated" if code is not None else "interrupted"
    print(f"{PROG} {command}: {what}", file=sys.stderr)
    note(f"{command}: {what}")
    return code if code is not None else EXIT_INTERRUPTED


# -- --json: one object on stdout, whatever happens ----------------------------------------
class _Answered:
    """``sys.stdout`` while a command with ``--json`` runs: notes whether it has printed
    its answer (anything but progress lines, see :func:`progress`)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.answered = False
        self.in_progress = False

    def write(self, text: str) -> int:
        if text and not self.in_progress:
            self.answered = True
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, reconfigure, buffer...
        return getattr(self.stream, name)


@dataclass
class _Answer:
    stdout: _Answered
    error: str | None = None
    path: str | None = None


_answer: _Answer | None = None


def progress(line: str) -> None:
    """A ``--progress`` line on stdout: not the JSON answer."""
    out = sys.stdout
    if isinstance(out, _Answered):
        out.in_progress = True
    try:
        print(line, flush=True)
    finally:
        if isinstance(out, _Answered):
            out.in_progress = False


def answer_in_json(command: Callable[[], int]) -> int:
    """Run ``command`` (the whole command line, parsing included) so that it ends with
    exactly one JSON object on stdout: when it exits non-zero (argparse's usage errors,
    an exception too) without having printed its answer, ``{"error", "exit_code"}`` with
    the line on stderr (and ``path`` where a file is to blame)."""
    global _answer

    answer = _answer = _Answer(_Answered(sys.stdout))
    saved, sys.stdout = sys.stdout, answer.stdout  # type: ignore[assignment]
    code: int = EXIT_NOT_SAFE
    try:
        code = command()
        return code
    except SystemExit as stop:  # argparse: usage errors (2), --help and --version (0)
        code = stop.code if isinstance(stop.code, int) else \
            EXIT_OK if stop.code is None else EXIT_NOT_SAFE
        raise
    except BaseException as err:  # a bug: its traceback follows on stderr
        if answer.error is None:
            first = (str(err).strip().splitlines() or [""])[0][:300]
            answer.error = f"{type(err).__name__}: {first}" if first else type(err).__name__
        raise
    finally:
        sys.stdout, _answer = saved, None
        if code != EXIT_OK and not answer.stdout.answered:
            out: dict[str, Any] = {"path": answer.path} if answer.path else {}
            out.update(error=answer.error or f"exit status {code}", exit_code=code)
            print(json.dumps(out), flush=True)
