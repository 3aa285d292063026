"""``torch.save`` zip archives (``torch-zip``), and the archive part of ``torch.jit.save``'s
(``torchscript``: :mod:`torchscript` holds what is TorchScript's own).

Layout: ``<root>/data.pkl`` is the pickled object; each storage is a record
``<root>/data/<key>``, stored uncompressed and aligned, so its bytes can be
memory-mapped in place. The root folder is whatever name the writer chose: torch
takes it from the FIRST record of the central directory. TorchScript archives add
``<root>/code/`` (the model's code, listed, never run) and ``<root>/constants.pkl``.

Records are found the way torch finds them (``_zip.Directory``: miniz's listing,
case-insensitive lookups under the first record's folder), never through Python's
``zipfile``. Besides ``data.pkl``, every ``.pkl`` record is interpreted as a pickle
torch runs, and every other record that parses as a pickle importing something is
recorded too (its imports count), whatever its first byte: a pickle may start with
any opcode.
"""

from __future__ import annotations

import contextlib
import mmap
import re
from typing import Any

from ckpt_inspector.core.dtypes import storage_class_dtype
from ckpt_inspector.core.errors import CheckpointError, PickleError
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats import _quota, _zip, _zip_audit, _zip_members, torchscript
from ckpt_inspector.core.formats._common import build_tree, fail, new_checkpoint, run_pickle
from ckpt_inspector.core.io.source import BytesSource, Source, span
from ckpt_inspector.core.pickle import vm as pickle_vm
from ckpt_inspector.core.pickle.values import GlobalRef, PersistentRef
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo

MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# A stored data.pkl is interpreted in place (no copy); torch's stays small even for huge
# models (about 100 bytes per tensor), but numpy arrays pickled inline can make it large.
MAX_PICKLE_BYTES = 1 << 30
# A compressed pickle (torch never writes one) is inflated into memory up to this size;
# past it, what was inflated is interpreted and the cap is reported.
MAX_INFLATED_PICKLE = 128 << 20
# Other records are tried as pickles from a prefix this long, then whole when the prefix
# parses as a pickle that goes on, within a budget for the whole archive.
SNIFF_BYTES = 64 << 10
MAX_SNIFF_MEMBER = 64 << 20
MAX_SNIFF_TOTAL = 256 << 20

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


NAME = "torch-zip"


def sniff(head: bytes) -> bool:
    """torch.load's own test (``_is_zipfile``): a local-header signature at byte 0. A file
    that starts with another zip record (an empty archive's end record) goes down the tar
    and pickle paths in torch, and so here."""
    return head[:4] == MAGIC[0]


class StorageTable:
    """Storage records by key; one :class:`StorageInfo` per (key, dtype) view of a record.

    ``lookup(key)`` gives the record torch reads for ``data/<key>`` (a DataSource), or
    None when the archive has none.
    """

    def __init__(self, ckpt: Checkpoint, lookup: Any):
        self.ckpt = ckpt
        self.lookup = lookup
        self.storages: dict[tuple[str, str], StorageInfo] = {}

    def used_records(self) -> set[int]:
        """ids of the zip members the object refers to as storages."""
        return {id(st.source.info) for st in self.storages.values()
                if isinstance(st.source, _zip_members.ZipEntryData)}

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
        source = self.lookup(key)
        if source is None:
            st.problem = st.problem or f"storage record {key!r} is missing from the file"
        else:
            if source.nbytes < st.nbytes:
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


def _pickle_name(name: str) -> bool:
    """Records torch's loaders unpickle by name (lookups ignore case)."""
    return name.lower().endswith((".pkl", ".debug_pkl"))


def outside_root(prefix: str, label: str) -> Finding:
    """A record outside the archive's folder: torch's reader refuses the archive."""
    return Finding("info", "outside-root",
                   f"a record lies outside the archive's folder {prefix!r}: torch's reader "
                   "refuses the whole archive (torch.load cannot read it)",
                   label.rstrip("/") or None)


class _Archive:
    """An open torch zip archive, as torch's reader sees it: its root folder, records and
    main pickle."""

    def __init__(self, ckpt: Checkpoint, src: Source, label: str, executed: bool = True):
        self.ckpt = ckpt
        self.raw = raw = src.data  # the archive's bytes (a map of the file, nested bytes)
        self.container = src.container
        self.label = label  # prefix for member names in findings ("" for the file itself)
        try:
            self.dir = _zip.directory_of(src)
        except _zip.ZipLimit as err:  # torch reads it: what it holds is not known here
            raise fail(ckpt, f"this zip archive is not read here: {err}; torch's reader "
                             "may open it") from None
        except _zip.ZipError as err:
            hint = ("; the file is probably truncated" if "too short" in str(err)
                    or "no end-of-directory" in str(err) else "")
            raise fail(ckpt, f"torch cannot open this zip archive: {err}{hint}") from None
        self.infos = self.dir.entries
        # records only Python's zipfile lists: scanned too, for what they import
        self.extra = _zip_audit.audit(ckpt, raw, self.dir, label)
        self.prefix = self.dir.prefix
        self.via_root = True  # records found under torch's root folder
        self.executed = executed  # False: no loader unpickles this archive's pickles
        main = self.dir.record("data.pkl")
        if main is None:
            main = self._fallback_main()
        elif main.raw_name != self.dir.root + b"/data.pkl":  # type: ignore[operator]
            ckpt.findings.append(Finding(
                DANGEROUS, "name-case",
                f"torch reads {main.filename!r} as {self.prefix}data.pkl (its zip reader "
                "ignores case): scanners that look for the exact name miss it",
                label + main.filename))
        self.main = main
        self.names = {e.filename: e for e in self.infos}
        self.is_script = torchscript.is_script(self.dir, self.prefix, self.names)
        if self.via_root and self.dir.all_records() is None:
            ckpt.findings.append(outside_root(self.prefix, label))
        self.byteorder = "little"
        order = self.dir.record("byteorder")
        if order is not None and order.file_size <= 64:
            try:
                text = _zip_members.read_member(raw, order, 64)[0].decode(
                    "ascii", "replace").strip()
                self.byteorder = "big" if text == "big" else "little"
            except _zip_members.MemberError:
                pass
        self.table = StorageTable(ckpt, self._storage)

    def _fallback_main(self) -> _zip.Entry:
        """No data.pkl where torch looks (its root comes from the first record): torch
        cannot load the file, but a ``<folder>/data.pkl`` is still read and scanned."""
        candidates = [e for e in self.infos if e.raw_name.lower().endswith(b"/data.pkl")
                      and e.raw_name.count(b"/") == 1]
        if not candidates:
            raise fail(self.ckpt, "zip archive without a data.pkl record: not a torch "
                                  "checkpoint")
        why = self.dir.root_problem or (f"its records live under {self.prefix!r}, taken "
                                        "from the first record")
        self.ckpt.warnings.append(f"torch cannot load this archive ({why}); "
                                  f"{candidates[0].filename} is shown anyway")
        self.via_root = self.executed = False
        self.prefix = candidates[0].filename[:-len("data.pkl")]
        return candidates[0]

    def close(self) -> None:
        """Let the table go of this archive: the two refer to each other, and a cycle
        outlives a read that pauses the collector (gcpause) for good."""
        self.table.lookup = None

    def _storage(self, key: str) -> _zip_members.ZipEntryData | None:
        if self.via_root:
            entry = self.dir.record(f"data/{key}")
        else:
            entry = self.dir.locate(f"{self.prefix}data/{key}")
        if entry is None or entry.is_dir:
            return None
        return _zip_members.ZipEntryData(self.container, entry, self.byteorder)

    def member(self, name: str) -> _zip.Entry | None:
        """A record by its name under the root, as torch finds it."""
        if self.via_root:
            return self.dir.record(name)
        return self.dir.locate(self.prefix + name)

    def load(self, info: Any, executed: bool = True) -> Any:
        """Interpret a member as a pickle. ``executed``: torch would unpickle it."""
        ckpt, raw = self.ckpt, self.raw
        where = self.label + info.filename
        refused = _zip_members.torch_refuses(info)
        if refused and info.compress_type not in (_zip.STORED, _zip.DEFLATED):
            raise fail(ckpt, f"{info.filename}: {refused}")
        if _zip_members.uninitialized(info):
            raise fail(ckpt, f"{info.filename}: torch's reader leaves its {info.file_size:,} "
                             "bytes uninitialized (a directory entry or no data)")
        try:
            start, end, local = _zip_members.data_span(raw, info)
        except _zip_members.MemberError as err:
            raise fail(ckpt, str(err)) from None
        if local != info.filename:
            ckpt.findings.append(_zip_members.name_mismatch(info, local, where))
        persistent = _persistent_load(self.table)
        if info.compress_type == _zip.STORED:
            if info.file_size > MAX_PICKLE_BYTES:
                message = (f"{info.filename} holds {info.file_size:,} bytes, more than the "
                           f"{MAX_PICKLE_BYTES >> 20} MiB the reader accepts")
                self._unscanned(message, where, executed)
                raise fail(ckpt, message)
            stop = min(start + info.file_size, len(raw))
            self._check_crc(info, span(raw, start, stop), where)
            if isinstance(raw, (bytes, mmap.mmap)):
                return self._run_in_place(raw, start, stop, where, executed, persistent)
            # a view into another file's bytes: the interpreter wants bytes, so copy the span
            return self._run_in_place(bytes(raw[start:stop]), 0, stop - start, where,
                                      executed, persistent)
        cap = min(info.file_size, MAX_INFLATED_PICKLE)
        data, complete = _zip_members.inflate(raw, start, end, cap, info.filename, exact=False)
        if complete or info.file_size <= MAX_INFLATED_PICKLE:
            if not complete and executed:
                ckpt.warnings.append(f"{info.filename}: damaged compressed data (torch's "
                                     "reader refuses it); what inflates is interpreted")
            self._check_crc(info, data, where)
            return run_pickle(ckpt, data, where, executed=executed, persistent_load=persistent,
                              end_hint=len(data))
        with contextlib.suppress(CheckpointError):  # recorded; the cap is the error
            run_pickle(ckpt, data, where, executed=executed, persistent_load=persistent)
        message = (f"{info.filename} inflates to {info.file_size:,} bytes, more than the "
                   f"{MAX_INFLATED_PICKLE >> 20} MiB the reader accepts: only its first "
                   f"{MAX_INFLATED_PICKLE >> 20} MiB were interpreted")
        self._unscanned(message, where, executed)
        raise fail(ckpt, message)

    def _unscanned(self, message: str, where: str, executed: bool) -> None:
        """A pickle too large to read whole: torch would run all of it, so what could not
        be seen is a finding of its own (torch never writes such a pickle compressed)."""
        self.ckpt.findings.append(Finding(
            DANGEROUS if executed else NEEDS_TRUST, "unscanned-pickle",
            f"{message}; torch would unpickle all of it", where))

    def _run_in_place(self, data: Any, start: int, stop: int, where: str, executed: bool,
                      persistent: Any) -> Any:
        """Interpret a stored member where it lies (no copy). The interpreter sees the
        file past the member's end; a pickle that runs on past it is one torch cannot
        finish, reported as such."""
        ckpt = self.ckpt
        try:
            result = run_pickle(ckpt, data, where, start, persistent, expect_end=False,
                                executed=executed, end_hint=stop)
        except CheckpointError:
            record = ckpt.pickles[-1]
            if record.result.end > stop or (record.error and "truncated" in record.error):
                record.error = (f"the pickle does not end inside its record ({stop - start:,} "
                                "bytes): torch's unpickler stops with an error there")
            raise
        record = ckpt.pickles[-1]
        if result.end > stop:
            record.error = (f"the pickle does not end inside its record ({stop - start:,} "
                            "bytes): torch's unpickler stops with an error there")
            raise fail(ckpt, f"broken pickle in {where}: {record.error}")
        record.trailing = stop - result.end
        return result

    def _check_crc(self, info: Any, data: Any, where: str) -> None:
        import zlib

        if zlib.crc32(data) != info.CRC:
            self.ckpt.findings.append(Finding(
                DANGEROUS, "crc-mismatch",
                f"{info.filename}'s checksum does not match its bytes: the archive was changed "
                "after it was written (torch does not check; zipfile-based scanners stop)",
                where))

    @property
    def entries(self) -> list[Any]:
        return [*self.infos, *self.extra]

    def scan_other_members(self) -> None:
        """Every other pickle in the archive is interpreted (though not shown): the .pkl
        records torch's loaders read, and any other record that parses as a pickle
        importing something (whatever its first byte), unless the object uses it as a
        storage."""
        used = self.table.used_records()
        budget = [MAX_SNIFF_TOTAL]
        theirs = {id(e) for e in self.extra}
        skipped: list[str] = []
        quota = _quota.current()
        for info in self.entries:
            if info is self.main or id(info) in used or info.file_size == 0 or (
                    isinstance(info, _zip.Entry) and info.is_dir):
                continue
            if not quota.allows(info.filename):
                continue
            try:
                if _pickle_name(info.filename):
                    quota.read += 1
                    self.load(info, executed=self.executed and id(info) not in theirs)
                elif self._sniff(info, budget, quota):
                    skipped.append(info.filename)
            except CheckpointError as err:  # recorded; the scanner reports it
                self.ckpt.warnings.append(str(err))
        quota.report(self.ckpt.findings, self.label.rstrip("/") or None)
        if skipped:
            more = f" and {len(skipped) - 3:,} more" if len(skipped) > 3 else ""
            self.ckpt.findings.append(Finding(
                NEEDS_TRUST, "unscanned-member",
                f"{', '.join(skipped[:3])}{more} were not tried as pickles: the "
                f"{MAX_SNIFF_TOTAL >> 20} MiB this reader spends per archive on records that "
                "are not pickles by name was used up", self.label.rstrip("/") or None))

    def _sniff(self, info: Any, budget: list[int], quota: _quota.PickleQuota) -> bool:
        """Record ``info`` if it parses as a pickle up to STOP with an import. True when
        the budget was spent before it could be tried."""
        found = sniff_pickle(self.raw, info, budget)
        if found is LATE:
            quota.late(info.filename)
        elif found is UNFINISHED:
            self.ckpt.findings.append(_zip_members.unscanned(
                info.filename, info.file_size, MAX_SNIFF_MEMBER, self.label + info.filename,
                " for records that are pickles by their bytes, not their name"))
        elif isinstance(found, bytes):
            quota.read += 1
            run_pickle(self.ckpt, found, self.label + info.filename, executed=False,
                       persistent_load=_persistent_load(self.table))
        return found is SKIPPED


class _Answer:
    def __init__(self, what: str):
        self.what = what

    def __repr__(self) -> str:
        return self.what


# sniff_pickle's answers for a record that starts a pickle going on past the caps, and for
# one left untried because the archive's budget is spent
UNFINISHED: Any = _Answer("UNFINISHED")
SKIPPED: Any = _Answer("SKIPPED")
LATE: Any = _Answer("LATE")  # the file's time limit ran out while it was tried


def _worth_recording(result: Any) -> bool:
    """A sniffed stream counts when it imports something with a real name (text that
    happens to parse gives names with spaces and punctuation) or hides an import."""
    if any(a.code == "dynamic-import" for a in result.anomalies):
        return True
    return any(g.literal and _IDENT.match(str(g.module)) and _IDENT.match(str(g.name))
               for g in result.globals)


def sniff_pickle(raw: Any, info: Any, budget: list[int]) -> bytes | None:
    """The bytes of ``info`` if they parse as a pickle up to STOP that imports something,
    read from a prefix first and whole only when the prefix is a pickle that goes on
    (``budget[0]``: bytes the archive may still spend). Never inflates more than needed.
    :data:`UNFINISHED` when the record starts a pickle that goes on past the caps,
    :data:`SKIPPED` when the budget is spent, :data:`LATE` when the file's time ran out."""
    if _zip_members.torch_refuses(info) and info.compress_type not in (_zip.STORED, _zip.DEFLATED):
        return None
    size = info.file_size
    want = min(size, SNIFF_BYTES)
    while True:
        if want > budget[0]:
            budget[0] = 0
            return SKIPPED
        data = _zip_members.read_prefix(raw, info, want)
        budget[0] -= len(data)
        if not data:
            return None
        try:
            result = pickle_vm.load(data)
        except PickleError as err:
            if _quota.ran_out(err):
                return LATE  # not tried: the file's time ran out
            partial = err.result
            if partial is not None and _worth_recording(partial):
                return data  # it imported something before it broke (or was cut)
            cut = len(data) < size and ("truncated" in err.reason or "missing end" in err.reason
                                        or (err.offset or 0) >= len(data) - 9)
            if not cut:
                return None
            if want >= min(size, MAX_SNIFF_MEMBER):
                return UNFINISHED
            want = min(size, MAX_SNIFF_MEMBER, max(want * 16, 1 << 20))
            continue
        return data if _worth_recording(result) else None


def read(src: Source) -> Checkpoint:
    """Read a torch zip or TorchScript archive without running anything in it."""
    ckpt = new_checkpoint(src, "torch-zip")
    ckpt.root = read_into(ckpt, src, "")
    return ckpt


def read_into(ckpt: Checkpoint, src: Source, label: str, executed: bool = True) -> Node:
    """The tree of the archive in ``src``; its pickles and findings go to ``ckpt``
    (``label`` prefixes member names for an archive nested in another file; ``executed``
    False for one that no loader would unpickle, found by its bytes alone)."""
    archive = _Archive(ckpt, src, label, executed)
    try:
        try:
            result = archive.load(archive.main, archive.executed)
        except CheckpointError:
            archive.scan_other_members()  # the other pickles still count
            raise
        roles = torchscript.ScriptRoles(archive) if archive.is_script else None
        try:
            with pickle_vm.not_counted():  # Python work of a few µs per tensor
                root = build_tree(ckpt, result.value, script_module_roles=roles)
        finally:
            archive.scan_other_members()
    finally:
        archive.close()
    code = torchscript.code_files(archive.names, archive.prefix)
    if archive.is_script:
        torchscript.note_code(ckpt, code, label)
    if not label:
        ckpt.format = "torchscript" if archive.is_script else "torch-zip"
        ckpt.metadata.update(_archive_metadata(archive, result.protocol))
        if archive.is_script:
            ckpt.metadata["code files"] = code
    return root


def load_nested(ckpt: Checkpoint, data: bytes, label: str) -> Any:
    """The inert root value of a torch zip archive embedded in a pickle."""
    archive = _Archive(ckpt, BytesSource(ckpt.path, data), label)
    try:
        try:
            value = archive.load(archive.main, archive.executed).value
        finally:
            archive.scan_other_members()
    finally:
        archive.close()
    return value


def _archive_metadata(archive: _Archive, protocol: int) -> dict[str, Any]:
    prefix = archive.prefix
    meta: dict[str, Any] = {"archive root": prefix.rstrip("/"), "records": len(archive.infos),
                            "byte order": archive.byteorder, "pickle protocol": protocol}
    for label, member in (("serialization version", "version"),
                          ("storage alignment", ".storage_alignment"),
                          ("format version", ".format_version")):
        info = archive.member(member)
        if info is not None and info.file_size < 64:
            with contextlib.suppress(_zip_members.MemberError):
                meta[label] = _zip_members.read_member(archive.raw, info, 64)[0].decode(
                    "ascii", "replace").strip()
    extra = sorted(n[len(prefix) + 6:] for n in archive.names if n.startswith(f"{prefix}extra/"))
    if extra:
        meta["extra files"] = extra
    return meta
