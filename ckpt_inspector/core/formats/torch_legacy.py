"""Files written with ``torch.save(..., _use_new_zipfile_serialization=False)``.

Layout: four pickles in a row (magic number, protocol version, system info,
the object), a fifth pickle listing storage keys, then each storage in that
order as an 8-byte element count followed by its raw bytes.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.formats._common import Blob, build_tree, fail, run_pickle
from ckpt_inspector.core.pickle_vm import GlobalRef, PersistentRef
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# the magic number as torch.save pickles it with its default protocol 2
HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."


def sniff(head: bytes) -> bool:
    if head.startswith(HEAD):
        return True
    # another pickle protocol: the first pickle is still the small magic number
    if head[:1] != b"\x80":
        return False
    stop = head.find(b".", 2, 48)
    if stop < 0:
        return False
    from ckpt_inspector.core import pickle_vm

    try:
        return pickle_vm.load(head[: stop + 1]).value == MAGIC_NUMBER
    except Exception:
        return False


class _Storages:
    def __init__(self) -> None:
        self.roots: dict[str, StorageInfo] = {}
        self.views: list[tuple[StorageInfo, str, int]] = []

    def persistent_load(self, pid: Any, offset: int) -> Any:
        if not (isinstance(pid, tuple) and pid):
            return PersistentRef(pid, offset)
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) == 4:
            return pid[1]  # a module class, saved with its source for a check on load
        if kind != "storage" or len(pid) != 6:
            return PersistentRef(pid, offset)
        _, stype, root_key, location, numel, view = pid
        if view is not None and not (isinstance(view, tuple) and len(view) == 3
                                     and all(isinstance(v, (int, str)) for v in view)):
            return PersistentRef(pid, offset)
        name = stype.name if isinstance(stype, GlobalRef) and stype.literal else ""
        dtype = storage_class_dtype(name) or "uint8"
        root_key = str(root_key)
        root = self.roots.get(root_key)
        if root is None:
            root = StorageInfo(root_key, dtype, numel if isinstance(numel, int) else 0,
                               str(location))
            if not storage_class_dtype(name):
                root.problem = f"unknown storage type {getattr(stype, 'full_name', stype)!r}"
            self.roots[root_key] = root
        if view is None:
            return root
        view_key, view_offset, view_size = view
        try:
            size, start = int(view_size), int(view_offset)
        except ValueError:
            return PersistentRef(pid, offset)
        st = StorageInfo(str(view_key), dtype, size, str(location))
        self.views.append((st, root_key, start))
        return st


def _load(ckpt: Checkpoint, blob: Blob, label: str) -> Any:
    data = blob.data
    pos = 0
    header = []
    for what in ("magic number", "protocol version", "system info"):
        result = run_pickle(ckpt, data, f"{label}{what}", pos, expect_end=False)
        header.append(result.value)
        pos = result.end
    if header[0] != MAGIC_NUMBER:
        raise fail(ckpt, "not a legacy torch file (wrong magic number)")
    if header[1] != PROTOCOL_VERSION:
        raise fail(ckpt, f"unsupported legacy protocol version {header[1]!r}")
    # torch writes storage sizes and data little-endian whatever sys_info says, and
    # ignores the flag when loading; so do we
    byteorder = "little"
    storages = _Storages()
    main = run_pickle(ckpt, data, f"{label}data", pos, storages.persistent_load,
                      expect_end=False)
    keys = run_pickle(ckpt, data, f"{label}storage keys", main.end, expect_end=False)
    pos = keys.end
    key_list = keys.value if isinstance(keys.value, list) else []
    unpack_count = struct.Struct("<q" if byteorder == "little" else ">q").unpack_from
    for key in key_list:
        st = storages.roots.get(str(key))
        if st is None:
            ckpt.warnings.append(f"storage {key!r} is listed but never used")
            break
        if pos + 8 > len(data):
            st.problem = "storage data is missing: the file is truncated"
            continue
        count = unpack_count(data, pos)[0]
        item = dtypes.itemsize(st.dtype) or 1
        nbytes = count * item
        if count < 0 or pos + 8 + nbytes > len(data):
            st.problem = "storage data runs past the end of the file"
            pos = len(data)
            continue
        if count != st.numel:
            st.problem = f"storage holds {count:,} elements, {st.numel:,} expected"
        st.source = blob.range(pos + 8, nbytes, byteorder)
        pos += 8 + nbytes
    for st in storages.roots.values():
        if st.source is None and st.problem is None:
            st.problem = "storage data is missing from the file"
    for view, root_key, offset in storages.views:
        root = storages.roots[root_key]
        item = dtypes.itemsize(view.dtype) or 1
        if root.source is None or root.problem:
            view.problem = root.problem or "storage data is missing"
        elif offset < 0 or (offset + view.numel) * item > root.source.nbytes:
            view.problem = "storage view lies outside its storage"
        else:
            src = root.source
            view.source = blob.range(getattr(src, "offset", 0) + offset * item,
                                     view.numel * item, byteorder)
    ckpt.pickles[-1].trailing = len(data) - pos  # bytes after the last storage
    if not blob.nested:
        ckpt.metadata.update({"legacy protocol": header[1], "byte order": byteorder,
                              "pickle protocol": main.protocol})
    return main.value


def read(path: str) -> Checkpoint:
    ckpt = Checkpoint(path, "torch-legacy", None, file_size=os.path.getsize(path))  # type: ignore[arg-type]
    ckpt.root = read_into(ckpt, Blob(path), "")
    return ckpt


def read_into(ckpt: Checkpoint, blob: Blob, label: str) -> Node:
    return build_tree(ckpt, _load(ckpt, blob, label))


def load_nested(ckpt: Checkpoint, data: bytes, label: str) -> Any:
    return _load(ckpt, Blob(ckpt.path, data), label)
