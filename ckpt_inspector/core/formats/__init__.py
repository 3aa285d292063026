"""Format detection and the one entry point every caller uses: :func:`open_checkpoint`."""

from __future__ import annotations

import os

from ckpt_inspector.core import pickle_vm
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.tree import Checkpoint

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
        raise archive.refuse_wrapper(kind)
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
            return _read(path)
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
