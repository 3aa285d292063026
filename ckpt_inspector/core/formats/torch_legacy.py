"""Files written with ``torch.save(..., _use_new_zipfile_serialization=False)``.

Layout: four pickles in a row (magic number, protocol version, system info,
the object), a fifth pickle listing storage keys, then each storage in that
order as an 8-byte element count followed by its raw bytes.

``torch.load`` unpickles the first pickle of any file that is neither a zip nor
a tar archive and only then compares the *value* with the magic number: the
number may be written with any protocol and any opcodes, and whatever that
first pickle does runs before the check. So the stream is read as a legacy
file whenever its first pickle evaluates (or may evaluate, when a call
computes it) to the magic number, and the first pickle always counts as run.
"""

from __future__ import annotations

import struct
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.findings import DANGEROUS, Finding
from ckpt_inspector.core.formats._common import build_tree, fail, new_checkpoint, run_pickle
from ckpt_inspector.core.io.source import BytesSource, Source
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.pickle.values import (
    Call,
    ExtensionRef,
    GlobalRef,
    PersistentRef,
    PickleResult,
    short_repr,
)
from ckpt_inspector.core.progress import Cancelled
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo

NAME = "torch-legacy"
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
# the magic number as torch.save pickles it with its default protocol 2
HEAD = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
SNIFF_BYTES = 64 << 10
# keys and locations longer than this are not used as dict keys nor printed whole
MAX_KEY_CHARS = 1024


def sniff(head: bytes) -> bool:
    """Whether the first pickle of ``head`` evaluates to the magic number (any protocol,
    any opcodes before it). Bounded: at most :data:`SNIFF_BYTES` are interpreted; a first
    pickle longer than that is found by :func:`pickle_file.sniff` and read the same way."""
    if head.startswith(HEAD):
        return True
    try:
        result = pickle_vm.load(bytes(head[:SNIFF_BYTES]))
    except Cancelled:
        raise
    except Exception:  # any other failure means "not this format"
        return False
    return equals(result.value, MAGIC_NUMBER) is True


def equals(value: Any, expected: int) -> bool | None:
    """Whether torch's ``value != expected`` check lets ``value`` through, for an inert
    value: True or False, or None when a call or an imported object makes the answer
    known only at load time (an object's ``__ne__`` may say anything)."""
    if type(value) in (int, float, complex, bool):
        return value == expected
    if isinstance(value, (Call, GlobalRef, ExtensionRef)):
        return None
    return False


def key_text(value: Any) -> Any:
    """A storage key or location as the dict key and label the reader uses: ``str`` of
    plain values (what torch.save writes), the object's identity for anything huge or
    odd, so it matches only itself (``str`` of a 1 MB integer is refused, hashing it is slow)."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return str(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else ("<odd key>", id(value))
    if isinstance(value, str):
        return value if len(value) <= MAX_KEY_CHARS else ("<odd key>", id(value))
    if isinstance(value, bytes) and len(value) <= MAX_KEY_CHARS:
        return value.decode("ascii", "replace")
    return ("<odd key>", id(value))  # the same object (a memoized one) is the same key


def _label(key: Any) -> str:
    return key if isinstance(key, str) else "<unreadable key>"


def _count(value: Any, limit: int) -> int | None:
    """``value`` when it is an element count no larger than ``limit``, else None."""
    if type(value) is int and 0 <= value <= limit:
        return value
    return None


class _Storages:
    def __init__(self, limit: int) -> None:
        self.roots: dict[Any, StorageInfo] = {}
        self.views: dict[Any, tuple[StorageInfo, Any, int]] = {}
        self.limit = limit  # no storage holds more elements than the file has bytes

    def persistent_load(self, pid: Any, offset: int) -> Any:
        if not (isinstance(pid, tuple) and pid):
            return PersistentRef(pid, offset)
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) >= 2:
            # a module class, saved with its source for a check on load: torch returns
            # saved_id[1] whatever the length (and checks the source only when all of the
            # rest is truthy), so a 3- or 5-tuple gives the class just as well
            return pid[1]
        if kind != "storage" or len(pid) != 6:
            return PersistentRef(pid, offset)
        _, stype, root_key, location, numel, view = pid
        if view is not None and not (isinstance(view, tuple) and len(view) == 3
                                     and all(isinstance(v, (int, str)) for v in view)):
            return PersistentRef(pid, offset)
        name = stype.name if isinstance(stype, GlobalRef) and stype.literal else ""
        dtype = storage_class_dtype(name) or "uint8"
        root_key = key_text(root_key)
        place = _label(key_text(location))
        root = self.roots.get(root_key)
        if root is None:
            size = _count(numel, self.limit)
            root = StorageInfo(_label(root_key), dtype, size or 0, place)
            if not storage_class_dtype(name):
                root.problem = f"unknown storage type {getattr(stype, 'full_name', stype)!r}"
            elif size is None:
                # torch would allocate it before reading anything: a problem, not a number
                # to multiply for every tensor that uses it
                root.problem = (f"storage claims {_describe(numel)} elements, more than the "
                                f"file's {self.limit:,} bytes")
            self.roots[root_key] = root
        if view is None:
            return root
        view_key, view_offset, view_size = view
        known = self.views.get(key_text(view_key))
        if known is not None:  # torch makes a view once per key
            return known[0]
        try:
            size, start = int(view_size), int(view_offset)
        except ValueError:
            return PersistentRef(pid, offset)
        st = StorageInfo(_label(key_text(view_key)), dtype, _count(size, self.limit) or 0,
                         place)
        if _count(size, self.limit) is None or _count(start, self.limit) is None:
            st.problem = "storage view lies outside its storage"
        self.views[key_text(view_key)] = (st, root_key, start)
        return st


def _describe(value: Any) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length():,} bits of"
    return f"{value:,}" if isinstance(value, int) else f"a {type(value).__name__} of"


def _header(ckpt: Checkpoint, data: Any, label: str, what: str, pos: int, expected: int,
            first: PickleResult | None = None) -> PickleResult:
    """One header pickle, checked by value the way torch checks it: torch stops at the
    first one that differs, after running it."""
    result = first or run_pickle(ckpt, data, f"{label}{what}", pos, expect_end=False)
    same = equals(result.value, expected)
    if result.end >= len(data):
        # torch reads the next pickle from an empty rest and fails: nothing more runs
        raise fail(ckpt, f"not a legacy torch file (it ends after its {what})")
    if same is False:
        if what == "magic number":
            raise fail(ckpt, "not a legacy torch file (wrong magic number)")
        raise fail(ckpt, f"unsupported legacy protocol version {_short(result.value)}")
    if same is None:
        ckpt.findings.append(Finding(
            DANGEROUS, "computed-header",
            f"the {what} is computed by {_short(result.value)} when the file is loaded: "
            "torch.save writes it as a number, a file that computes it hides what it is",
            label.rstrip("/") or None, result.start))
    return result


def _short(value: Any) -> str:
    return short_repr(value, 80)


def _load(ckpt: Checkpoint, src: Source, label: str,
          first: PickleResult | None = None) -> Any:
    """The object of a legacy stream. ``first``: the magic-number pickle, when the caller
    has already run it."""
    data = src.buffer()
    magic = _header(ckpt, data, label, "magic number", 0, MAGIC_NUMBER, first)
    version = _header(ckpt, data, label, "protocol version", magic.end, PROTOCOL_VERSION)
    sys_info = run_pickle(ckpt, data, f"{label}system info", version.end, expect_end=False)
    # torch writes storage sizes and data little-endian whatever sys_info says, and
    # ignores the flag when loading; so do we
    byteorder = "little"
    storages = _Storages(len(data))
    main = run_pickle(ckpt, data, f"{label}data", sys_info.end, storages.persistent_load,
                      expect_end=False)
    keys = run_pickle(ckpt, data, f"{label}storage keys", main.end, expect_end=False)
    pos = keys.end
    key_list = keys.value if isinstance(keys.value, list) else []
    unpack_count = struct.Struct("<q" if byteorder == "little" else ">q").unpack_from
    for key in key_list:
        st = storages.roots.get(key_text(key))
        if st is None:
            ckpt.warnings.append(f"storage {_short(key)} is listed but never used")
            break
        if pos + 8 > len(data):
            st.problem = st.problem or "storage data is missing: the file is truncated"
            break  # torch fails here: every storage after it is missing too
        count = unpack_count(data, pos)[0]
        item = dtypes.itemsize(st.dtype) or 1
        nbytes = count * item
        if count < 0 or pos + 8 + nbytes > len(data):
            st.problem = st.problem or "storage data runs past the end of the file"
            pos = len(data)
            break
        if count != st.numel and st.problem is None:
            st.problem = f"storage holds {count:,} elements, {st.numel:,} expected"
        st.source = src.range(pos + 8, nbytes, byteorder)
        pos += 8 + nbytes
    for st in storages.roots.values():
        if st.source is None and st.problem is None:
            st.problem = "storage data is missing from the file"
    for view, root_key, offset in storages.views.values():
        root = storages.roots[root_key]
        item = dtypes.itemsize(view.dtype) or 1
        if view.problem:
            continue
        if root.source is None or root.problem:
            view.problem = root.problem or "storage data is missing"
        elif offset < 0 or (offset + view.numel) * item > root.source.nbytes:
            view.problem = "storage view lies outside its storage"
        else:
            view.source = src.range(getattr(root.source, "offset", 0) + offset * item,
                                     view.numel * item, byteorder)
    ckpt.pickles[-1].trailing = len(data) - pos  # bytes after the last storage
    if src.path is not None:
        ckpt.metadata.update({"legacy protocol": PROTOCOL_VERSION, "byte order": byteorder,
                              "pickle protocol": main.protocol})
    return main.value


def read(src: Source) -> Checkpoint:
    ckpt = new_checkpoint(src, "torch-legacy")
    ckpt.root = read_into(ckpt, src, "")
    return ckpt


def read_into(ckpt: Checkpoint, src: Source, label: str,
              first: PickleResult | None = None) -> Node:
    """The legacy stream in ``src``; ``first`` is its first pickle when already run."""
    return build_tree(ckpt, _load(ckpt, src, label, first))


def load_nested(ckpt: Checkpoint, data: bytes, label: str) -> Any:
    return _load(ckpt, BytesSource(ckpt.path, data), label)
