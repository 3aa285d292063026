"""Errors raised by the core. Every problem with a user's file is a CheckpointError.

Each error carries the ``exit_code`` the command line ends with (the table that turns
an error into one line on stderr is ``ckpt_inspector/cli/_errors.py``): 1 not safe or
failed, 2 usage, 3 unreadable input."""

from __future__ import annotations


class CheckpointError(Exception):
    """A file could not be read. ``str(err)`` is one line meant for the user.

    ``partial`` is the part of the checkpoint that was read before the problem
    (a :class:`~ckpt_inspector.core.tree.Checkpoint`), so that a scan can still
    report what the file would import.
    """

    partial = None
    exit_code = 3


class PickleError(CheckpointError):
    """A pickle stream is malformed, truncated or hostile.

    ``offset`` is the byte position of the opcode that failed, when known.
    """

    def __init__(self, message: str, offset: int | None = None, limit: bool = False):
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
        self.offset = offset
        self.reason = message
        # refused by one of this reader's bounds (time, opcodes, sizes), where Python's
        # unpickler reads on: not a sign that the stream ends or that a loader fails there
        self.limit = limit
        self.result = None  # pickle_vm.PickleResult: what was read before the error


class ExportError(CheckpointError):
    """An export failed (the message says why): exit 1 on the command line."""

    exit_code = 1


class ExportUsageError(ExportError):
    """An export (or a file save) cannot be done as asked (an option, a key, the output
    path): exit 2."""

    exit_code = 2


class SourceDataError(ExportError):
    """The source file's data cannot be read: exit 3, like any unreadable input."""

    exit_code = 3
