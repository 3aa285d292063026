"""Errors raised by the core. Every problem with a user's file is a CheckpointError."""

from __future__ import annotations


class CheckpointError(Exception):
    """A file could not be read. ``str(err)`` is one line meant for the user.

    ``partial`` is the part of the checkpoint that was read before the problem
    (a :class:`~ckpt_inspector.core.tree.Checkpoint`), so that a scan can still
    report what the file would import.
    """

    partial = None


class PickleError(CheckpointError):
    """A pickle stream is malformed, truncated or hostile.

    ``offset`` is the byte position of the opcode that failed, when known.
    """

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
        self.offset = offset
        self.reason = message
        self.result = None  # pickle_vm.PickleResult: what was read before the error
