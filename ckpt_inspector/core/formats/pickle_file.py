"""A bare pickle stream (``.pkl``, old ``.bin`` files), read with the same interpreter.

A tensor pickled with plain ``pickle.dump`` carries its storage as a torch
checkpoint nested in bytes (``torch.storage._load_from_bytes(b'...')``); that
nested checkpoint is read the same way, without running anything.
"""

from __future__ import annotations

import os
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import torch_legacy, torch_zip
from ckpt_inspector.core.formats._common import Blob, build_tree, run_pickle
from ckpt_inspector.core.pickle_vm import LazyBytes
from ckpt_inspector.core.tree import Checkpoint, Node

# opcodes a protocol 0/1 pickle can start with
_PROTO0_FIRST = set(b"(]})NIJKLFSVUTXcdlt")


def sniff(head: bytes) -> bool:
    if not head:
        return False
    if head[0] == 0x80:
        return len(head) > 1 and head[1] <= 5
    return head[0] in _PROTO0_FIRST


class _Nested:
    """Reads checkpoints embedded as bytes, at most a few levels deep."""

    def __init__(self, ckpt: Checkpoint, label: str = ""):
        self.ckpt = ckpt
        self.label = label
        self.count = 0

    def __call__(self, raw: bytes | LazyBytes) -> Any:
        data = raw.tobytes() if isinstance(raw, LazyBytes) else bytes(raw)
        self.count += 1
        label = f"{self.label}embedded#{self.count}/"
        try:
            if torch_zip.sniff(data[:8]):
                return torch_zip.load_nested(self.ckpt, data, label)
            if torch_legacy.sniff(data[:64]):
                return torch_legacy.load_nested(self.ckpt, data, label)
        except CheckpointError as err:
            self.ckpt.warnings.append(f"embedded checkpoint: {err}")
            return None
        self.ckpt.warnings.append("embedded bytes are not a torch checkpoint")
        return None


def read(path: str) -> Checkpoint:
    ckpt = Checkpoint(path, "pickle", None, file_size=os.path.getsize(path))  # type: ignore[arg-type]
    ckpt.root = read_into(ckpt, Blob(path), "")
    return ckpt


def read_into(ckpt: Checkpoint, blob: Blob, label: str, executed: bool = True) -> Node:
    result = run_pickle(ckpt, blob.data, label, executed=executed)
    if not label:
        ckpt.metadata["pickle protocol"] = result.protocol
    return build_tree(ckpt, result.value, nested_loader=_Nested(ckpt, label))
