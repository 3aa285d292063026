"""Pieces shared by the pickle-based readers (torch zip, legacy, bare pickle)."""

from __future__ import annotations

import io
import mmap
import os
from typing import Any

from ckpt_inspector.core import pickle_vm
from ckpt_inspector.core.errors import CheckpointError, PickleError
from ckpt_inspector.core.pickle_tree import TreeBuilder
from ckpt_inspector.core.tensors import BytesRange, DataSource, FileRange
from ckpt_inspector.core.tree import Checkpoint, Node, PickleRecord


class Blob:
    """The bytes of a file (memory-mapped) or of a checkpoint nested in another one.

    ``source`` is what ``zipfile``/``tarfile`` open: the path, or a BytesIO of the bytes.
    """

    def __init__(self, path: str, data: bytes | None = None):
        self.path = path
        self.nested = data is not None
        if data is not None:
            self.data: Any = data
        else:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            if size and hasattr(mmap, "MADV_RANDOM"):
                # the reader jumps between headers: do not read ahead into tensor data
                self.data.madvise(mmap.MADV_RANDOM)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def source(self) -> Any:
        return io.BytesIO(self.data) if self.nested else self.path

    @property
    def container(self) -> str | bytes:
        """What a ZipEntryData reads from: the path, or the nested bytes."""
        return self.data if self.nested else self.path

    def range(self, offset: int, length: int, byteorder: str = "little") -> DataSource:
        if self.nested:
            return BytesRange(self.data, offset, length, byteorder)
        return FileRange(self.path, offset, length, byteorder)


def run_pickle(
    ckpt: Checkpoint,
    data: Any,
    member: str,
    start: int = 0,
    persistent_load: pickle_vm.PersistentLoad | None = None,
    *,
    expect_end: bool = True,
    executed: bool = True,
) -> pickle_vm.PickleResult:
    """Interpret one pickle and record it on ``ckpt``.

    With ``expect_end``, bytes after STOP are recorded as trailing data (the
    scanner flags them). On a broken stream the partial record is kept and a
    :class:`CheckpointError` carrying ``ckpt`` is raised.
    """
    try:
        result = pickle_vm.load(data, start, persistent_load=persistent_load)
    except PickleError as err:
        partial = err.result or pickle_vm.PickleResult(None, start, start, 0)
        _tag(partial, member)
        ckpt.pickles.append(PickleRecord(member, partial, error=str(err), executed=executed))
        where = f" in {member}" if member else ""
        raise _with_partial(CheckpointError(f"broken pickle{where}: {err}"), ckpt) from None
    _tag(result, member)
    record = PickleRecord(member, result, executed=executed)
    if expect_end:
        record.trailing = len(data) - result.end
    ckpt.pickles.append(record)
    return result


def _tag(result: pickle_vm.PickleResult, member: str) -> None:
    for g in result.globals:
        g.member = member


def _with_partial(err: CheckpointError, ckpt: Checkpoint) -> CheckpointError:
    if ckpt.root is None:
        ckpt.root = Node("truncated", note="the file could not be read")
    err.partial = ckpt
    return err


def build_tree(ckpt: Checkpoint, value: Any, **options: Any) -> Node:
    """The node tree of an inert pickle value. A failure keeps the pickles already
    recorded on ``ckpt`` (as ``err.partial``), so a scan still reports what they do."""
    builder = TreeBuilder(**options)
    try:
        root = builder.build(value)
    except Exception as err:  # a reader bug on odd input must not hide the findings
        raise fail(ckpt, f"could not interpret the file's objects "
                         f"({type(err).__name__}: {err})") from err
    ckpt.warnings.extend(builder.warnings)
    return root


def fail(ckpt: Checkpoint, message: str) -> CheckpointError:
    """A CheckpointError that keeps what was read so far, for the scanner."""
    return _with_partial(CheckpointError(message), ckpt)
