"""Files written atomically: staged beside the target, renamed into place when complete.

A staged file is ``.NAME.XXXXXXXX.partial`` in the target's folder (a staged folder,
for outputs made of several files, has the same shape of name). It is renamed over the
target only when the writer says so (:meth:`StagedFile.commit`), and removed otherwise;
:func:`remove_partial` removes what a killed writer left. The user's source file is
never written: :func:`check_target` refuses an output that would replace it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator

from ckpt_inspector.core.errors import ExportUsageError

PARTIAL = ".partial"  # temporary names: .NAME.XXXXXXXX.partial beside the target


def check_target(out_path: str, source_path: str, overwrite: bool) -> None:
    """Refuse an output that is the source, a folder, an existing file (without
    ``overwrite``) or in a folder that does not exist (all :class:`ExportUsageError`)."""
    out = os.path.abspath(out_path)
    if not out_path or out_path.endswith(("/", os.sep)) or os.path.basename(out) in (".", ".."):
        raise ExportUsageError(f"{out_path!r} names a folder: give the file to write")
    if os.path.lexists(out):
        if os.path.exists(source_path) and os.path.exists(out) and os.path.samefile(
                out, source_path):
            raise ExportUsageError("the output would replace the source file: choose another "
                                   "name")
        if os.path.isdir(out):
            raise ExportUsageError(f"{out} is a folder: give the file to write")
        if not overwrite:
            raise ExportUsageError(f"{out} exists (overwrite it explicitly)")
    folder = os.path.dirname(out) or "."
    if not os.path.isdir(folder):
        raise ExportUsageError(f"folder {folder} does not exist")


def temp_name(out_path: str) -> str:
    """A new, empty temporary file beside ``out_path``, created with the mode the umask
    gives new files (``mkstemp`` would make it 0600)."""
    folder = os.path.dirname(os.path.abspath(out_path))
    base = os.path.basename(out_path)
    while True:
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}{PARTIAL}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def temp_folder(out_path: str) -> str:
    """A new, empty temporary folder beside ``out_path`` (for an output made of several
    files, such as an ONNX model with its external data)."""
    name = os.path.basename(out_path)
    return tempfile.mkdtemp(prefix=f".{name}.", suffix=PARTIAL,
                            dir=os.path.dirname(os.path.abspath(out_path)))


def replace_into(tmp: str, out_path: str) -> None:
    """``os.replace``, keeping the permissions of the file being replaced."""
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(os.stat(out_path).st_mode))
    os.replace(tmp, out_path)


class StagedFile:
    """A temporary file beside the target: moved into place by :meth:`commit`, removed
    otherwise (an error, Ctrl-C, a failed verification)."""

    def __init__(self, out_path: str):
        self.out_path = out_path
        self.path = temp_name(out_path)
        self.committed = False

    def size(self) -> int:
        return os.path.getsize(self.path)

    def commit(self) -> None:
        replace_into(self.path, self.out_path)
        self.committed = True

    def discard(self) -> None:
        if not self.committed:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


@contextlib.contextmanager
def staged_file(out_path: str) -> Iterator[StagedFile]:
    """A :class:`StagedFile` that is removed on leaving unless it was committed."""
    staged = StagedFile(out_path)
    try:
        yield staged
    finally:
        staged.discard()


@contextlib.contextmanager
def staged_folder(out_path: str) -> Iterator[str]:
    """A temporary folder beside ``out_path``, removed with what it holds on leaving (its
    files are moved out by the caller when they are kept)."""
    work = temp_folder(out_path)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out_path: str) -> Iterator[str]:
    """A temporary file beside ``out_path``, renamed over it only when writing finished."""
    with staged_file(out_path) as staged:
        yield staged.path
        staged.commit()


def remove_partial(out_path: str) -> list[str]:
    """Remove what a killed writer of ``out_path`` left beside it (its staged files and
    folders); returns the paths removed."""
    folder, name = os.path.dirname(os.path.abspath(out_path)), os.path.basename(out_path)
    removed = []
    for path in glob.glob(os.path.join(folder, f".{glob.escape(name)}.*{PARTIAL}")):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
        removed.append(path)
    return removed
