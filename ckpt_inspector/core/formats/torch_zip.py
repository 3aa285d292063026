"""``torch.save`` zip archives (``torch-zip``) and ``torch.jit.save`` archives (``torchscript``).

Layout: ``<root>/data.pkl`` is the pickled object; each storage is a record
``<root>/data/<key>``, stored uncompressed and aligned, so its bytes can be
memory-mapped in place. The root folder is whatever name the writer chose.
TorchScript archives add ``<root>/code/`` (the model's code, listed here,
never run) and ``<root>/constants.pkl``.
"""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
from typing import Any

from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import _zip
from ckpt_inspector.core.formats._common import Blob, build_tree, fail, run_pickle
from ckpt_inspector.core.pickle_vm import Call, GlobalRef, PersistentRef
from ckpt_inspector.core.scan import DANGEROUS, Finding
from ckpt_inspector.core.tensors import ZipEntryData
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo

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

    def used_records(self) -> set[int]:
        """ids of the zip members the object refers to as storages."""
        return {id(st.source.info) for st in self.storages.values()
                if isinstance(st.source, ZipEntryData)}

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

    def __init__(self, ckpt: Checkpoint, zf: zipfile.ZipFile, raw: Any, container: str | bytes,
                 label: str):
        self.ckpt = ckpt
        self.zf = zf
        self.raw = raw  # the archive's bytes (a memory map of the file, or nested bytes)
        self.label = label  # prefix for member names in findings ("" for the file itself)
        self.infos = zf.infolist()
        self.names = {i.filename: i for i in self.infos}  # the last of duplicates, as torch
        _zip.audit(ckpt, raw, self.infos, label)
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
            with contextlib.suppress(_zip.MemberError):
                text = _zip.read_member(raw, order, 64)[0].decode("ascii", "replace").strip()
                self.byteorder = "big" if text == "big" else "little"
        data_prefix = f"{prefix}data/"
        sources: dict[str, Any] = {
            n[len(data_prefix):]: ZipEntryData(container, i, self.byteorder)
            for n, i in self.names.items() if n.startswith(data_prefix) and not n.endswith("/")
        }
        self.table = StorageTable(ckpt, sources)

    def load(self, info: zipfile.ZipInfo, executed: bool = True) -> Any:
        """Interpret a member as a pickle. ``executed``: torch would unpickle it."""
        where = self.label + info.filename
        try:
            payload, crc_ok, local = _zip.read_checked(self.raw, info, MAX_PICKLE_BYTES)
        except _zip.MemberError as err:
            raise fail(self.ckpt, str(err)) from None
        if local != info.filename:
            self.ckpt.findings.append(_zip.name_mismatch(info, local, where))
        if not crc_ok:
            self.ckpt.findings.append(Finding(
                DANGEROUS, "crc-mismatch",
                f"{info.filename}'s checksum does not match its bytes: the archive was changed "
                "after it was written (torch does not check; zipfile-based scanners stop)", where))
        return run_pickle(self.ckpt, payload, where, executed=executed,
                          persistent_load=_persistent_load(self.table))

    @property
    def main(self) -> zipfile.ZipInfo:
        return self.names[f"{self.prefix}data.pkl"]

    def scan_other_members(self) -> None:
        """Every other pickle in the archive is interpreted (though not shown): the .pkl
        records torch reads, and any member that starts like a pickle but is not a
        storage the object refers to."""
        used = self.table.used_records()
        for info in self.infos:
            if info is self.main:
                continue
            if info.filename.endswith((".pkl", ".debug_pkl")):
                executed = True
            elif id(info) not in used and _zip.looks_like_pickle(self.raw, info):
                executed = False
            else:
                continue
            try:
                self.load(info, executed)
            except CheckpointError as err:  # recorded; the scanner reports it
                self.ckpt.warnings.append(str(err))


def _open_zip(ckpt: Checkpoint, source: Any) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(source)
    except zipfile.BadZipFile as err:
        if "not a zip file" in str(err):  # no end-of-archive record where zip puts it
            raise fail(ckpt, "the zip archive is incomplete (its directory at the end is "
                             "missing): the file is probably truncated") from None
        raise fail(ckpt, f"damaged zip archive: {err}") from None
    except (OSError, ValueError, EOFError, RuntimeError) as err:
        raise fail(ckpt, f"damaged zip archive: {err}") from None


def read(path: str) -> Checkpoint:
    """Read a torch zip or TorchScript archive without running anything in it."""
    blob = Blob(path)
    ckpt = Checkpoint(path, "torch-zip", None, file_size=len(blob))  # type: ignore[arg-type]
    ckpt.root = read_into(ckpt, blob, "")
    return ckpt


def read_into(ckpt: Checkpoint, blob: Blob, label: str) -> Node:
    """The tree of the archive in ``blob``; its pickles and findings go to ``ckpt``
    (``label`` prefixes member names for an archive nested in another file)."""
    with _open_zip(ckpt, blob.source) as zf:
        archive = _Archive(ckpt, zf, blob.data, blob.container, label)
        result = archive.load(archive.main)
        roles = _ScriptRoles(archive) if archive.is_script else None
        root = build_tree(ckpt, result.value, script_module_roles=roles)
        archive.scan_other_members()
        code = sorted(n[len(archive.prefix):] for n in archive.names
                      if n.startswith(f"{archive.prefix}code/") and n.endswith(".py"))
        if archive.is_script:
            runs = (f"TorchScript archive{' ' + label.rstrip('/') if label else ''}: "
                    f"torch.jit.load compiles and runs the {len(code)} code files it contains")
            ckpt.runs_code = f"{ckpt.runs_code}; {runs}" if ckpt.runs_code else runs
        if not label:
            ckpt.format = "torchscript" if archive.is_script else "torch-zip"
            ckpt.metadata.update(_archive_metadata(archive, result.protocol))
            if archive.is_script:
                ckpt.metadata["code files"] = code
    return root


def load_nested(ckpt: Checkpoint, data: bytes, label: str) -> Any:
    """The inert root value of a torch zip archive embedded in a pickle."""
    with _open_zip(ckpt, io.BytesIO(data)) as zf:
        archive = _Archive(ckpt, zf, data, data, label)
        value = archive.load(archive.main).value
        archive.scan_other_members()
        return value


def _archive_metadata(archive: _Archive, protocol: int) -> dict[str, Any]:
    prefix, names = archive.prefix, archive.names
    meta: dict[str, Any] = {"archive root": prefix.rstrip("/"), "records": len(archive.infos),
                            "byte order": archive.byteorder, "pickle protocol": protocol}
    for label, member in (("serialization version", "version"),
                          ("storage alignment", ".storage_alignment"),
                          ("format version", ".format_version")):
        info = names.get(prefix + member)
        if info is not None and info.file_size < 64:
            with contextlib.suppress(_zip.MemberError):
                meta[label] = _zip.read_member(archive.raw, info, 64)[0].decode(
                    "ascii", "replace").strip()
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

    def __init__(self, archive: _Archive):
        self.classes: dict[str, dict[str, str]] = {}
        code = f"{archive.prefix}code/"
        for info in archive.infos:
            name = info.filename
            if not (name.startswith(code) and name.endswith(".py")):
                continue
            module = name[len(code):-3].replace("/", ".")
            try:
                text = _zip.read_member(archive.raw, info, 50 << 20)[0].decode("utf-8",
                                                                                "replace")
            except _zip.MemberError:
                continue
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
