"""The tar format of torch before 0.4, which ``torch.load`` still reads (and runs).

Members: ``storages`` (a count, then per storage a pickled ``(key, location,
storage type)`` followed by an 8-byte element count and the raw data, then a
pickled list of storage views), ``tensors`` (a count, then per tensor a
pickled ``(key, storage key, type)`` followed by ndim, sizes, strides and
offset as little-endian integers) and ``pickle`` (the object, whose persistent
ids name those tensors and storages). Read as ``torch-legacy``, without
extracting anything.
"""

from __future__ import annotations

import struct
import tarfile
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.formats._common import Blob, build_tree, fail, run_pickle
from ckpt_inspector.core.pickle_tree import check_tensor
from ckpt_inspector.core.pickle_vm import GlobalRef, PersistentRef
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

MEMBERS = ("storages", "tensors", "pickle")


def sniff(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def members_of(ckpt: Checkpoint, blob: Blob) -> dict[str, tarfile.TarInfo]:
    try:
        with tarfile.open(fileobj=blob.source, mode="r:") if blob.nested else \
                tarfile.open(blob.path, "r:") as tar:
            return {m.name: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as err:
        raise fail(ckpt, f"damaged tar archive: {err}") from None


def is_torch_tar(members: dict[str, tarfile.TarInfo]) -> bool:
    return all(m in members for m in MEMBERS)


def read(path: str) -> Checkpoint:
    blob = Blob(path)
    ckpt = Checkpoint(path, "torch-legacy", None, file_size=len(blob))  # type: ignore[arg-type]
    ckpt.root = read_into(ckpt, blob, "")
    return ckpt


def read_into(ckpt: Checkpoint, blob: Blob, label: str) -> Node:
    data = blob.data
    members = members_of(ckpt, blob)
    if not is_torch_tar(members):
        raise fail(ckpt, "tar archive without the storages/tensors/pickle members of a "
                         "torch checkpoint")
    if not label:
        ckpt.metadata["container"] = "tar (torch < 0.4)"
    objects: dict[Any, Any] = {}

    # storages -------------------------------------------------------------------------------
    m = members["storages"]
    pos, end = m.offset_data, m.offset_data + m.size
    count = run_pickle(ckpt, data, f"{label}storages", pos, expect_end=False)
    pos = count.end
    for i in range(count.value if isinstance(count.value, int) else 0):
        args = run_pickle(ckpt, data, f"{label}storages#{i}", pos, expect_end=False)
        pos = args.end
        try:
            key, location, stype = args.value
        except (TypeError, ValueError):
            raise fail(ckpt, "malformed storage record in the tar archive") from None
        name = stype.name if isinstance(stype, GlobalRef) and stype.literal else ""
        dtype = storage_class_dtype(name) or "uint8"
        item = dtypes.itemsize(dtype) or 1
        if pos + 8 > end:
            raise fail(ckpt, "storage data is truncated")
        (numel,) = struct.unpack_from("<q", data, pos)
        nbytes = numel * item
        st = StorageInfo(str(key), dtype, max(numel, 0), str(location))
        if numel < 0 or pos + 8 + nbytes > end:
            st.problem = "storage data runs past its tar member"
            pos = end
        else:
            st.source = blob.range(pos + 8, nbytes)
            pos += 8 + nbytes
        objects[key] = st
    if pos < end:
        views = run_pickle(ckpt, data, f"{label}storage views", pos, expect_end=False)
        for view in views.value if isinstance(views.value, list) else []:
            try:
                target, root_key, offset, numel = view
                root = objects[root_key]
                item = dtypes.itemsize(root.dtype) or 1
                st = StorageInfo(str(target), root.dtype, int(numel), root.location)
                if root.source is not None and offset >= 0 and (offset + numel) * item <= \
                        root.source.nbytes:
                    st.source = blob.range(root.source.offset + offset * item, numel * item)
                else:
                    st.problem = "storage view lies outside its storage"
                objects[target] = st
            except (TypeError, ValueError, KeyError):
                ckpt.warnings.append("a malformed storage view was skipped")

    # tensors ----------------------------------------------------------------------------------
    m = members["tensors"]
    pos, end = m.offset_data, m.offset_data + m.size
    count = run_pickle(ckpt, data, f"{label}tensors", pos, expect_end=False)
    pos = count.end
    for i in range(count.value if isinstance(count.value, int) else 0):
        args = run_pickle(ckpt, data, f"{label}tensors#{i}", pos, expect_end=False)
        pos = args.end
        try:
            key, storage_key, _tensor_type = args.value
            (ndim,) = struct.unpack_from("<i", data, pos)
            if not 0 <= ndim <= 64:
                raise ValueError("bad ndim")
            sizes = struct.unpack_from(f"<{ndim}q", data, pos + 8)
            strides = struct.unpack_from(f"<{ndim}q", data, pos + 8 + 8 * ndim)
            (offset,) = struct.unpack_from("<q", data, pos + 8 + 16 * ndim)
        except (TypeError, ValueError, struct.error):
            raise fail(ckpt, "malformed tensor record in the tar archive") from None
        pos += 16 + 16 * ndim
        storage = objects.get(storage_key)
        info = TensorInfo(storage.dtype if storage else "unknown", sizes, strides, offset,
                          storage, device=storage.location if storage else "unknown")
        info.problem = check_tensor(info, offset, storage)
        objects[key] = info

    # the object ---------------------------------------------------------------------------------
    def persistent_load(pid: Any, offset: int) -> Any:
        if isinstance(pid, tuple) and pid:
            return pid[0]  # a module class, saved with its source
        try:
            return objects[int(pid)]
        except (KeyError, ValueError, TypeError):
            return PersistentRef(pid, offset)

    m = members["pickle"]
    main = run_pickle(ckpt, data[m.offset_data:m.offset_data + m.size], f"{label}pickle", 0,
                      persistent_load)
    root = build_tree(ckpt, main.value)
    if not label:
        ckpt.metadata["pickle protocol"] = main.protocol
        extra = sorted(set(members) - set(MEMBERS) - {"sys_info"})
        if extra:
            ckpt.metadata["other members"] = extra
    return root

