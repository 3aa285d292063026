"""How a command ends: exit codes, and every error as one line on stderr, in one table.

Exit codes: 0 ok / safe, 1 not safe (``export``: failed or not verified; ``diff``:
different), 2 usage, 3 unreadable input (one line on stderr naming the file and the
problem, never a traceback), 130 / 143 after Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import sys

from ckpt_inspector.core.errors import (
    CheckpointError,
    ExportError,
    ExportUsageError,
    SourceDataError,
)
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


def fail(message: str, code: int) -> int:
    """``ckpt-inspector: MESSAGE`` on stderr (after what stdout holds); returns ``code``."""
    sys.stdout.flush()
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def usage(message: str) -> int:
    return fail(message, EXIT_USAGE)


def report(err: BaseException, path: str, command: str | None = None) -> int:
    """The table's line for ``err`` on stderr; its exit code. An error no row covers is
    raised again."""
    for kind, where, code, line in TABLE:
        if isinstance(err, kind) and where in (None, command):
            text = str(err) or type(err).__name__
            first = (str(err).strip().splitlines() or [""])[0][:300]
            return fail(line.format(path=path, err=text, kind=type(err).__name__,
                                    first_line=first),
                        code if code is not None else getattr(err, "exit_code", EXIT_NOT_SAFE))
    raise err


def unreadable(path: str, err: BaseException) -> int:
    """``ckpt-inspector: PATH: what is wrong``, exit 3."""
    return fail(f"{path}: {str(err) or type(err).__name__}", EXIT_UNREADABLE)


def interrupted(command: str) -> int:
    """Ctrl-C in info, scan, stats…: one line, no traceback."""
    print(f"{PROG} {command}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED
