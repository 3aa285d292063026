"""``torch.save`` zip archives (``torch-zip``) and ``torch.jit.save`` archives (``torchscript``).

Layout: ``<root>/data.pkl`` is the pickled object; each storage is a record
``<root>/data/<key>``, stored uncompressed and aligned, so its bytes can be
memory-mapped in place. The root folder is whatever name the writer chose.
TorchScript archives add ``<root>/code/`` (the model's code, listed here,
never run) and ``<root>/constants.pkl``.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections import Counter
from typing import Any

from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats._common import build_tree, fail, run_pickle
from ckpt_inspector.core.pickle_vm import Call, GlobalRef, PersistentRef
from ckpt_inspector.core.scan import DANGEROUS, Finding
from ckpt_inspector.core.tensors import ZipEntryData
from ckpt_inspector.core.tree import Checkpoint, StorageInfo

MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# torch's data.pkl stays small even for huge models (about 100 bytes per tensor)
MAX_PICKLE_BYTES = 1 << 30


def sniff(head: bytes) -> bool:
    return head[:4] in MAGIC


class StorageTable:
    """Storage records by key; one :class:`StorageInfo` per (key, dtype) view of a record."""

    def __init__(self, ckpt: Checkpoint, sources: dict[str, Any]):
        self.ckpt = ckpt
        self.sources = sources  # key -> DataSource | None
        self.storages: dict[tuple[str, str], StorageInfo] = {}

    def get(self, stype: Any, key: Any, location: Any, numel: Any) -> StorageInfo:
        class_name = stype.name if isinstance(stype, GlobalRef) and stype.literal else ""
        dtype = storage_class_dtype(class_name) or "uint8"
        key = str(key)
        cached = self.storages.get((key, dtype))
        if cached is not None:
            return cached
        st = StorageInfo(key, dtype, numel if isinstance(numel, int) else 0, str(location))
        if not class_name or storage_class_dtype(class_name) is None:
            st.problem = f"unknown storage type {getattr(stype, 'full_name', stype)!r}"
        elif not isinstance(numel, int) or numel < 0:
            st.problem = "malformed storage size"
        if key not in self.sources:
            st.problem = st.problem or f"storage record {key!r} is missing from the file"
        else:
            source = self.sources[key]
            if source is not None and source.nbytes < st.nbytes:
                st.problem = st.problem or (
                    f"storage record {key!r} holds {source.nbytes:,} bytes, "
                    f"{st.nbytes:,} expected")
            st.source = source
        self.storages[(key, dtype)] = st
        return st


def _persistent_load(table: StorageTable):
    def load(pid: Any, offset: int) -> Any:
        if isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage":
            _, stype, key, location, numel = pid
            return table.get(stype, key, location, numel)
        return PersistentRef(pid, offset)

    return load


class _Archive:
    """An open torch zip archive: its root folder, storage records and main pickle."""

    def __init__(self, ckpt: Checkpoint, zf: zipfile.ZipFile, container: str | bytes, label: str):
        self.ckpt = ckpt
        self.zf = zf
        self.label = label  # prefix for member names in findings ("" for the file itself)
        self.infos = zf.infolist()
        self.names = {i.filename: i for i in self.infos}  # the last of duplicates, as torch
        counts = Counter(i.filename for i in self.infos)
        for name, n in counts.items():
            if n > 1:
                ckpt.findings.append(Finding(
                    DANGEROUS, "duplicate-member",
                    f"the archive holds {n} records named {name!r}: zip readers disagree on "
                    "which one counts, a way to show a scanner one pickle and torch another",
                    label + name))
        roots = [n[: -len("data.pkl")] for n in self.names
                 if n.endswith("/data.pkl") and n.count("/") == 1]
        if not roots:
            raise fail(ckpt, "zip archive without a data.pkl record: not a torch checkpoint")
        self.prefix = prefix = roots[0]
        if len(roots) > 1:
            ckpt.warnings.append(f"archive has {len(roots)} data.pkl records; reading {prefix}")
        self.is_script = f"{prefix}constants.pkl" in self.names or any(
            n.startswith(f"{prefix}code/") for n in self.names)
        self.byteorder = "little"
        order = self.names.get(f"{prefix}byteorder")
        if order is not None and order.file_size <= 64:
            raw = zf.read(order).decode("ascii", "replace").strip()
            self.byteorder = "big" if raw == "big" else "little"
        data_prefix = f"{prefix}data/"
        sources: dict[str, Any] = {
            n[len(data_prefix):]: ZipEntryData(container, i, self.byteorder)
            for n, i in self.names.items() if n.startswith(data_prefix) and not n.endswith("/")
        }
        self.table = StorageTable(ckpt, sources)

    def load(self, info: zipfile.ZipInfo) -> Any:
        if info.file_size > MAX_PICKLE_BYTES:
            raise fail(self.ckpt, f"{info.filename} holds {info.file_size:,} bytes of pickle, "
                                  f"more than the {MAX_PICKLE_BYTES >> 20} MiB the reader accepts")
        try:
            payload = self.zf.read(info)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError) as err:
            raise fail(self.ckpt, f"cannot read {info.filename}: {err}") from None
        return run_pickle(self.ckpt, payload, self.label + info.filename,
                          persistent_load=_persistent_load(self.table))

    @property
    def main(self) -> zipfile.ZipInfo:
        return self.names[f"{self.prefix}data.pkl"]


def _open_zip(ckpt: Checkpoint, source: Any) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise fail(ckpt, f"damaged zip archive: {err}") from None


def read(path: str) -> Checkpoint:
    """Read a torch zip or TorchScript archive without running anything in it."""
    ckpt = Checkpoint(path, "torch-zip", None, file_size=os.path.getsize(path))  # type: ignore[arg-type]
    with _open_zip(ckpt, path) as zf:
        archive = _Archive(ckpt, zf, path, "")
        if archive.is_script:
            ckpt.format = "torchscript"
        result = archive.load(archive.main)
        roles = _ScriptRoles(zf, archive.prefix) if archive.is_script else None
        build_tree(ckpt, result.value, script_module_roles=roles)

        # every other pickle in the archive is scanned, though not shown
        for info in archive.infos:
            if info is not archive.main and info.filename.endswith((".pkl", ".debug_pkl")):
                try:
                    archive.load(info)
                except CheckpointError as err:  # recorded; the scanner reports it
                    ckpt.warnings.append(str(err))
        ckpt.metadata.update(_archive_metadata(zf, archive.prefix, archive.names,
                                               archive.byteorder, result.protocol))
        if archive.is_script:
            code = sorted(n[len(archive.prefix):] for n in archive.names
                          if n.startswith(f"{archive.prefix}code/") and n.endswith(".py"))
            ckpt.metadata["code files"] = code
            ckpt.runs_code = (f"TorchScript archive: torch.jit.load compiles and runs the "
                              f"{len(code)} code files it contains")
    return ckpt


def load_nested(ckpt: Checkpoint, data: bytes, label: str) -> Any:
    """The inert root value of a torch zip archive embedded in another file."""
    with _open_zip(ckpt, io.BytesIO(data)) as zf:
        archive = _Archive(ckpt, zf, data, label)
        return archive.load(archive.main).value


def _archive_metadata(zf: zipfile.ZipFile, prefix: str, names: dict[str, Any], byteorder: str,
                      protocol: int) -> dict[str, Any]:
    meta: dict[str, Any] = {"archive root": prefix.rstrip("/"), "records": len(names),
                            "byte order": byteorder, "pickle protocol": protocol}
    for label, member in (("serialization version", "version"),
                          ("storage alignment", ".storage_alignment"),
                          ("format version", ".format_version")):
        info = names.get(prefix + member)
        if info is not None and info.file_size < 64:
            meta[label] = zf.read(info).decode("ascii", "replace").strip()
    extra = sorted(n[len(prefix) + 6:] for n in names if n.startswith(f"{prefix}extra/"))
    if extra:
        meta["extra files"] = extra
    return meta


_CLASS_RE = re.compile(r"^class (\w+)\(", re.M)
_LIST_RE = re.compile(r"^\s+__(parameters|buffers)__ = \[([^\]]*)\]", re.M)


class _ScriptRoles:
    """Which attributes of each scripted class are parameters and buffers.

    TorchScript writes ``__parameters__ = ["weight", ]`` and ``__buffers__``
    into each class of ``code/``; ``state_dict()`` holds exactly those.
    """

    def __init__(self, zf: zipfile.ZipFile, prefix: str):
        self.classes: dict[str, dict[str, str]] = {}
        code = f"{prefix}code/"
        for info in zf.infolist():
            name = info.filename
            if not (name.startswith(code) and name.endswith(".py")) or info.file_size > 50 << 20:
                continue
            module = name[len(code):-3].replace("/", ".")
            text = zf.read(info).decode("utf-8", "replace")
            starts = [(m.start(), m.group(1)) for m in _CLASS_RE.finditer(text)]
            for i, (start, cls) in enumerate(starts):
                end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
                roles: dict[str, str] = {}
                for m in _LIST_RE.finditer(text, start, end):
                    role = "parameter" if m.group(1) == "parameters" else "buffer"
                    for attr in re.findall(r'"([^"]+)"', m.group(2)):
                        roles[attr] = role
                self.classes[f"{module}.{cls}"] = roles

    def __call__(self, call: Call) -> dict[str, str] | None:
        cls = call.func
        if isinstance(cls, GlobalRef) and cls.literal and str(cls.module).startswith("__torch__"):
            return self.classes.get(cls.full_name, {})
        return None
