"""Format detection and the one entry point every caller uses: :func:`open_checkpoint`."""

from __future__ import annotations

import os

from ckpt_inspector.core import pickle_vm
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tree import Checkpoint, Node

FORMATS = ("torch-zip", "torch-legacy", "torchscript", "pickle", "safetensors", "onnx",
           "pt2", "archive")


def _head(path: str, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def detect_format(path: str) -> str:
    """The reader for ``path``, decided from its first bytes (``torchscript`` reads as
    ``torch-zip`` until the archive is opened; ``torch-tar`` is the pre-0.4 legacy
    format, reported as ``torch-legacy``). Raises CheckpointError if none fits."""
    from ckpt_inspector.core.formats import (
        archive,
        onnx_fmt,
        pickle_file,
        safetensors_fmt,
        torch_legacy,
        torch_tar,
        torch_zip,
    )

    head = _head(path)
    if not head:
        raise CheckpointError("empty file")
    if torch_zip.sniff(head):
        return archive.classify_zip(path)
    if torch_tar.sniff(head):
        return archive.classify_tar(path)
    kind = archive.wrapper_kind(head)
    if kind:
        # torch.load unpickles whatever is not a zip or a tar: "BZh" also starts a pickle
        # (BINBYTES), so one that parses is read as such; refused only if it is not one
        return f"pickle-or-{kind}" if pickle_file.sniff(head) else archive.raise_wrapper(kind)
    if torch_legacy.sniff(head):
        return "torch-legacy"
    if safetensors_fmt.sniff(head):
        return "safetensors"
    if onnx_fmt.sniff(head) or (path.lower().endswith(".onnx") and head[:1] == b"\x08"):
        return "onnx"
    if pickle_file.sniff(head):
        return "pickle"
    raise CheckpointError("not a checkpoint: the format is not recognised")


def open_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read the structure of a checkpoint file. Never runs code from the file.

    Raises CheckpointError (one line for the user, without the path) when the
    file cannot be read; ``err.partial`` then holds what was read so far.
    """
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            raise CheckpointError("is a folder, not a file")
        with pickle_vm.deadline():  # one time limit for every pickle the file holds
            try:
                ckpt = _read(path)
            except CheckpointError as err:
                # unreadable as what its first bytes say, yet maybe an archive to torch
                partial = err.partial or Checkpoint(path, "unknown", Node(
                    "truncated", note="the file could not be read"))
                if not _is_zip(partial) and _zip_view(partial):
                    err.partial = partial
                raise
            if not _is_zip(ckpt):
                _zip_view(ckpt)
            return ckpt
    except FileNotFoundError:
        raise CheckpointError("no such file") from None
    except PermissionError:
        raise CheckpointError("permission denied") from None
    except IsADirectoryError:
        raise CheckpointError("is a folder, not a file") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the file: {err}") from None


def _read(path: str) -> Checkpoint:
    from ckpt_inspector.core.formats import (
        archive,
        onnx_fmt,
        pickle_file,
        pt2,
        safetensors_fmt,
        torch_legacy,
        torch_tar,
        torch_zip,
    )

    fmt = detect_format(path)
    if fmt.startswith("pickle-or-"):
        try:
            return pickle_file.read(path)
        except CheckpointError as err:
            if err.partial is not None and err.partial.pickles and \
                    err.partial.pickles[0].result.globals:
                raise
            raise archive.refuse_wrapper(fmt[len("pickle-or-"):]) from None
    reader = {
        "torch-zip": torch_zip.read,
        "torch-legacy": torch_legacy.read,
        "torch-tar": torch_tar.read,  # reported as torch-legacy
        "archive": lambda p: archive.read(p, "zip"),
        "pt2": pt2.read,
        "archive-tar": lambda p: archive.read(p, "tar"),
        "safetensors": safetensors_fmt.read,
        "onnx": onnx_fmt.read,
        "pickle": pickle_file.read,
    }[fmt]
    return reader(path)


ZIP_FORMATS = ("torch-zip", "torchscript", "pt2")


def _is_zip(ckpt: Checkpoint) -> bool:
    return ckpt.format in ZIP_FORMATS or (ckpt.format == "archive"
                                          and ckpt.metadata.get("container") == "zip")


def _zip_view(ckpt: Checkpoint) -> bool:
    """A file read as another format may also be a zip to ``torch.jit.load`` and
    ``torch.export.load``: torch's zip reader (miniz) finds the archive from its directory
    at the *end* of the file, whatever the first bytes say. Such a polyglot is dangerous
    and what its archive holds is scanned too."""
    from ckpt_inspector.core.formats import _zip, archive, pt2, torch_zip
    from ckpt_inspector.core.formats._common import Blob
    from ckpt_inspector.core.scan import DANGEROUS, Finding

    blob = Blob(ckpt.path)
    try:
        _zip.find_end_record(blob.data, len(blob.data))
        try:  # miniz, as torch.jit.load and torch.export.load read it
            kind = archive._kind_of(_zip.open_directory(blob.data))
        except _zip.ZipError:
            # torch.export.load's fallback for the older layout reads with zipfile, which
            # allows for bytes before the archive; torch.jit.load has no such fallback
            infos, _why = _zip.zipfile_view(blob.data)
            kind = archive._kind_of_names([i.orig_filename for i in infos or []])
            if kind != "pt2":
                return False
    except Exception:  # no archive torch's readers would open either
        return False
    if kind not in ("torch-zip", "pt2"):
        return False
    loader = "torch.export.load" if kind == "pt2" else "torch.jit.load / torch.export.load"
    try:
        view = (pt2.read if kind == "pt2" else torch_zip.read)(ckpt.path)
    except CheckpointError as err:
        view = err.partial
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot",
        f"the file is also a {kind} archive that {loader} opens from the directory at its "
        f"end, whatever its first bytes say: it reads as {ckpt.format} to one loader and as "
        "an archive to another"))
    if view is not None:
        for record in view.pickles:
            record.member = f"(as {kind}) {record.member}"
        ckpt.pickles.extend(view.pickles)
        ckpt.findings.extend(view.findings)
        if view.runs_code:
            ckpt.runs_code = f"{ckpt.runs_code}; {view.runs_code}" if ckpt.runs_code \
                else view.runs_code
    return True
