"""``torch.export.save`` archives (``.pt2``): an exported program's weights and graph.

Layout (``torch/export/pt2_archive``): ``<root>/archive_format`` says ``pt2``;
``<root>/models/<model>.json`` is a serialized graph; ``data/weights/<model>_weights_config.json``
maps each state_dict name to a record ``data/weights/<path_name>`` holding its raw bytes
plus dtype, sizes and strides; constants work the same way under ``data/constants/``;
``data/sample_inputs/<model>.pt`` holds the example inputs.

What ``torch.export.load`` runs, and how this reader treats it:

- records with ``use_pickle`` (weights and ``tensor_`` constants):
  ``torch.load(weights_only=False)``, so any pickle in them runs;
- ``opaque_obj_`` constants: ``pickle.loads``; ``custom_obj_`` constants:
  ``torch._C._pickle_load_obj``;
- legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` and the sample inputs:
  ``torch.load(weights_only=True)``, then ``weights_only=False`` when that fails;
- when torch's own zip reader fails, ``torch.export.load`` falls back to Python's
  ``zipfile`` and the older layout (``serialized_state_dict.pt`` ...), loaded the same way;
- ``data/aotinductor/<model>/`` holds AOTInductor's compiled native code, which loading
  runs (a ``native-code`` finding);
- sympy parses (``eval``) every ``expr_str`` of the graph, and ``ep.module()`` executes
  ``guards_code``: anything there that is not a plain expression is dangerous.

All of these pickles are interpreted as the loader would run them (``executed``), each
embedded torch file like any other. A malformed JSON entry is reported and skipped: it
never hides the pickles from the scan.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats import _quota, _zip, _zip_audit, _zip_members, torch_zip
from ckpt_inspector.core.formats._common import new_checkpoint, run_pickle
from ckpt_inspector.core.formats._pt2_expressions import check_expressions
from ckpt_inspector.core.formats._pt2_expressions import (
    unsafe_expression as unsafe_expression,  # tests read it here
)
from ckpt_inspector.core.formats._pt2_weights import tensor_node
from ckpt_inspector.core.io.source import BytesSource, Source, span
from ckpt_inspector.core.scan import classify
from ckpt_inspector.core.tree import Checkpoint, Node

NAME = "pt2"
MAX_JSON_BYTES = 64 << 20
# embedded torch files (pickled weights, sample inputs) read into memory when compressed
MAX_NESTED_BYTES = 256 << 20
NATIVE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".cubin", ".hsaco", ".spv", ".fatbin",
                   ".ptx", ".o", ".a", ".wrapper.cpp", ".kernel.cpp", ".cpp")
NATIVE_MAGIC = (b"\x7fELF", b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe",
                b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
LEGACY_FILES = ("serialized_state_dict.pt", "serialized_constants.pt",
                "serialized_example_inputs.pt")


def is_native(head: bytes) -> bool:
    """ELF, Mach-O or PE (a DOS header whose stub or PE signature shows)."""
    return head.startswith(NATIVE_MAGIC) or (
        head.startswith(b"MZ") and (b"PE\0\0" in head or b"This program" in head))


def is_pt2(names: list[str]) -> bool:
    """Whether torch.export.load reads an archive of these records as a program: its
    ``archive_format`` record, or the older layout its fallback reads with Python's
    zipfile (its ``serialized_exported_program.json``, named as zipfile names it: cut at a
    NUL), whatever else the archive holds (a data.pkl too)."""
    if any(n.endswith("/archive_format") and n.count("/") == 1 for n in names):
        return True
    return "serialized_exported_program.json" in {n.split("\0", 1)[0] for n in names}


def read(src: Source) -> Checkpoint:
    ckpt = new_checkpoint(src, "pt2")
    ckpt.root = read_into(ckpt, src, "")
    return ckpt


def read_into(ckpt: Checkpoint, src: Source, label: str) -> Node:
    reader = _Reader(ckpt, src, label)
    reader.modern()
    reader.legacy()
    reader.rest()
    if not label:
        ckpt.metadata.update(reader.metadata())
    return reader.root


class _Reader:
    def __init__(self, ckpt: Checkpoint, src: Source, label: str):
        self.ckpt, self.src, self.label = ckpt, src, label
        self.raw = src.data
        self.root = Node("dict", None, "torch.export program")
        self.done: set[int] = set()  # ids of records already read
        self.ops: Counter[str] = Counter()
        self.graphs = 0
        self.extra: list[_zip.Entry] = []
        try:
            self.dir: _zip.Directory | None = _zip.directory_of(src)
        except _zip.ZipError as err:
            self.dir = None
            ckpt.warnings.append(f"torch cannot open this zip archive ({err}); "
                                 "torch.export.load then reads it with Python's zipfile")
        if self.dir is not None:
            self.extra = _zip_audit.audit(ckpt, self.raw, self.dir, label)
        self.names: list[str] = []
        if self.dir is not None:
            listed = self.dir.all_records()
            if listed is None and self.dir.record("data.pkl") is not None:
                # a torch.save archive too, whose records torch's reader refuses
                ckpt.findings.append(torch_zip.outside_root(self.dir.prefix, label))
            self.names = listed if listed is not None else [
                n for n in (self.dir.under_root(e) for e in self.dir.entries) if n is not None]

    # -- helpers ------------------------------------------------------------------------------
    def where(self, entry: Any) -> str:
        return self.label + entry.filename

    def record(self, name: str) -> _zip.Entry | None:
        return self.dir.record(name) if self.dir is not None else None

    def member_bytes(self, entry: Any, cap: int, runs: bool = False) -> Any:
        """The record's bytes: a zero-copy view when stored, else inflated up to ``cap``
        (None, with a finding, past it: dangerous when ``runs``, a loader unpickling it
        whole; torch never writes such a record compressed)."""
        raw = self.raw
        start, end, _local = _zip_members.data_span(raw, entry)
        if entry.compress_type == _zip.STORED:
            return span(raw, start, min(start + entry.file_size, len(raw)))
        if entry.file_size > cap:
            finding = _zip_members.unscanned(entry.filename, entry.file_size, cap,
                                             self.where(entry))
            if runs:
                finding.severity = DANGEROUS
                finding.message += "; torch.export.load unpickles all of it"
            self.ckpt.findings.append(finding)
            return None
        return _zip_members.inflate(raw, start, end, entry.file_size, entry.filename,
                                    exact=False)[0]

    def zipfile_bytes(self, entry: Any, name: str, runs: bool) -> bytes | None:
        """``ZipFile.read(name)``, or None with a finding past MAX_NESTED_BYTES."""
        try:
            return _zip_audit.zipfile_read(self.raw, name, MAX_NESTED_BYTES)
        except _zip_members.MemberError:
            if entry.file_size <= MAX_NESTED_BYTES and entry.compress_size <= MAX_NESTED_BYTES:
                raise
        finding = _zip_members.unscanned(entry.filename, max(entry.file_size, entry.compress_size),
                                 MAX_NESTED_BYTES, self.where(entry))
        if runs:
            finding.severity = DANGEROUS
            finding.message += "; torch.export.load unpickles all of it"
        self.ckpt.findings.append(finding)
        return None

    def read_json(self, entry: Any) -> Any:
        """A JSON record, or None (with a warning) when it is too large or not JSON."""
        self.done.add(id(entry))
        if entry.file_size > MAX_JSON_BYTES:
            self.ckpt.findings.append(Finding(
                NEEDS_TRUST, "unscanned-member",
                f"{entry.filename} holds {entry.file_size:,} bytes of JSON, more than the "
                f"{MAX_JSON_BYTES >> 20} MiB this reader parses: what it describes was not "
                "checked", self.where(entry)))
            return None
        try:
            data = self.member_bytes(entry, MAX_JSON_BYTES)
            return None if data is None else json.loads(bytes(data))
        except (_zip_members.MemberError, ValueError, UnicodeDecodeError, RecursionError) as err:
            self.ckpt.warnings.append(f"{entry.filename}: {err}")
            return None

    def nested(self, entry: Any, title: str, executed: bool = True,
               by_zipfile: str | None = None) -> Node | None:
        """An embedded file that ``torch.load`` reads: its pickles interpreted as run. Its
        bytes as torch's zip reader gets them, or as Python's zipfile does (``by_zipfile``:
        the legacy layout, whose loader reads records with ``ZipFile.read(by_zipfile)``)."""
        self.done.add(id(entry))
        name = entry.filename
        try:
            if by_zipfile:
                data = self.zipfile_bytes(entry, by_zipfile, executed)
            else:
                data = self.member_bytes(entry, MAX_NESTED_BYTES, runs=executed)
            if data is None:
                return None
            node = read_torch_bytes(self.ckpt, data, f"{self.src.name}!{name}",
                                    f"{self.label}{name}/", executed)
        except (CheckpointError, _zip_members.MemberError) as err:  # reported; the rest still reads
            self.ckpt.warnings.append(f"{name}: {err}")
            return None
        if node is not None:
            node.key = title
        return node

    def bare_pickle(self, entry: Any) -> None:
        """``pickle.loads`` of a record (opaque constants): any pickle runs."""
        self.done.add(id(entry))
        try:
            data = self.member_bytes(entry, MAX_NESTED_BYTES, runs=True)
            if data is not None:
                run_pickle(self.ckpt, bytes(data), self.where(entry), expect_end=False)
        except (CheckpointError, _zip_members.MemberError) as err:
            self.ckpt.warnings.append(f"{entry.filename}: {err}")

    # -- torch.export.load: load_pt2 ----------------------------------------------------------
    def modern(self) -> None:
        if self.dir is None:
            return
        names = set(self.names)
        for name in [n for n in self.names if n.startswith("models/")]:
            self.model(name[len("models/"):len(name) - len(".json")], name, names)
        # every payload config, whatever model names (or none) the graphs give
        for kind in ("weights", "constants"):
            target = self.root if kind == "weights" else Node("dict", "constants", "constants")
            for name in self.names:
                if name.startswith(f"data/{kind}/") and name.endswith("_config.json"):
                    entry = self.record(name)
                    if entry is not None and id(entry) not in self.done:
                        self.payloads(entry, kind, target)
            if kind == "constants" and target.children:
                self.root.add(target)
        self.native_code()

    def model(self, model: str, name: str, names: set[str]) -> None:
        """One model's graph, sample inputs and legacy weights/constants files."""
        entry = self.record(name)
        if entry is not None:
            self.graph(entry)
        sample = self.record(f"data/sample_inputs/{model}.pt")
        if sample is not None:
            node = self.nested(sample, f"sample inputs ({model}.pt)")
            if node is not None:
                for n in node.walk():  # example inputs, not part of the model's state
                    if n.kind == "tensor":
                        n.role = "attribute"
                self.root.add(node)
        for kind in ("weights", "constants"):
            legacy = f"data/{kind}/{model}.pt"
            if legacy in names and (e := self.record(legacy)) is not None:
                node = self.nested(e, f"{kind} ({model}.pt)")
                if node is not None:
                    self.root.add(node)

    def payloads(self, config_entry: Any, kind: str, target: Node) -> None:
        config = self.read_json(config_entry)
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            if config is not None:
                self.ckpt.warnings.append(f"{config_entry.filename}: no 'config' mapping")
            return
        base = f"data/{kind}/"
        for key, entry in entries.items():
            key = str(key)
            if not isinstance(entry, dict):
                self.ckpt.warnings.append(f"{config_entry.filename}: {key!r} is not an object")
                continue
            path_name = entry.get("path_name")
            if not isinstance(path_name, str):
                self.ckpt.warnings.append(f"{config_entry.filename}: {key!r} has no path_name")
                continue
            record = self.record(posixpath.join(base, path_name))
            pickled = bool(entry.get("use_pickle"))
            custom = kind == "constants" and path_name.startswith("custom_obj_")
            opaque = kind == "constants" and path_name.startswith("opaque_obj_")
            if record is None:
                if pickled or custom or opaque:
                    self.ckpt.warnings.append(f"{key}: record {path_name!r} is missing")
                target.add(tensor_node(self.src.container, None, key, entry,
                                       "record missing from the archive"))
                continue
            if opaque:  # pickle.loads
                self.bare_pickle(record)
                target.add(Node("value", key, "opaque object",
                                "<pickled object: pickle.loads runs it>"))
            elif custom or pickled:  # torch._C._pickle_load_obj / torch.load(weights_only=False)
                node = self.nested(record, key)
                target.add(node if node is not None else
                           Node("value", key, "pickled object", "<could not be read>"))
            else:
                self.done.add(id(record))
                target.add(tensor_node(self.src.container, record, key, entry))

    def graph(self, entry: Any) -> None:
        """Summarize a serialized program; check what torch evaluates from it."""
        self.graphs += 1
        model = self.read_json(entry)
        if model is None:
            return
        try:
            nodes = model.get("graph_module", {}).get("graph", {}).get("nodes", [])
        except AttributeError:
            nodes = []
        for n in nodes if isinstance(nodes, list) else []:
            if isinstance(n, dict):
                target = str(n.get("target", "?"))
                self.ops[target] += 1
        for target in self.ops:
            module, _, name = target.rpartition(".")
            if module and classify(module, name) == DANGEROUS:
                self.ckpt.findings.append(Finding(
                    DANGEROUS, "dangerous-import",
                    f"the graph calls {target}: running the program runs it",
                    self.where(entry), name=target))
        check_expressions(self.ckpt, model, self.where(entry))

    def native_code(self) -> None:
        """AOTInductor packages: shared libraries and kernels that loading runs."""
        assert self.dir is not None
        models: dict[str, list[str]] = {}
        for e in self.dir.entries:
            name = self.dir.under_root(e)
            if name is not None and name.startswith("data/aotinductor/"):
                model = name[len("data/aotinductor/"):].split("/", 1)[0]
                models.setdefault(model, []).append(name)
                self.done.add(id(e))
        for model, files in models.items():
            native = [f for f in files if f.endswith(NATIVE_SUFFIXES)] or files
            self.ckpt.findings.append(Finding(
                NEEDS_TRUST, "native-code",
                f"AOTInductor package {model!r}: torch.export.load loads its compiled native "
                f"code ({', '.join(native[:3])}{' ...' if len(native) > 3 else ''}), which "
                "runs with the user's rights and cannot be inspected here",
                f"{self.label}{self.dir.prefix}data/aotinductor/{model}"))

    # -- torch.export.load's fallback: Python's zipfile and the older layout ----------------
    def legacy(self) -> None:
        infos, _why = _zip_audit.zipfile_view(self.raw)
        if not infos:
            return
        # torch compares ZipInfo.filename (cut at a NUL); zipfile's read() takes the last
        by_name = {i.filename: i for i in infos}
        if "version" not in by_name:
            return
        for name in LEGACY_FILES:
            info = by_name.get(name)
            if info is None:
                continue
            entry = self._same(_zip_audit.as_entry(info))
            if id(entry) in self.done:
                continue
            node = self.nested(entry, name[len("serialized_"):].replace(".pt", ""),
                               by_zipfile=name)
            if node is not None:
                self.root.add(node)
        info = by_name.get("serialized_exported_program.json")
        if info is not None:
            entry = self._same(_zip_audit.as_entry(info))
            if id(entry) not in self.done:
                self.graph(entry)

    def _same(self, entry: _zip.Entry) -> Any:
        """The torch-view record at the same place, so nothing is read twice."""
        if self.dir is not None:
            for e in self.dir.entries:
                if e.key() == entry.key():
                    return e
        return entry

    # -- everything else ------------------------------------------------------------------
    def rest(self) -> None:
        """Records no pt2 loader reads by name: ``.pkl`` records (``torch.load`` of the
        file runs ``data.pkl``), embedded torch files, pickles and native code hidden
        under other names."""
        entries: list[Any] = [*(self.dir.entries if self.dir else []), *self.extra]
        budget = [torch_zip.MAX_SNIFF_TOTAL]
        theirs = {id(e) for e in self.extra}
        skipped: list[str] = []
        quota = _quota.current()
        for e in entries:
            if id(e) in self.done or e.file_size == 0 or e.filename.endswith("/"):
                continue
            self.done.add(id(e))
            if not quota.allows(e.filename):
                continue
            head = _zip_members.read_prefix(self.raw, e, 512)
            if is_native(head) or e.filename.endswith((".so", ".dll", ".dylib", ".pyd")):
                self.ckpt.findings.append(Finding(
                    NEEDS_TRUST, "native-code",
                    f"{e.filename} is compiled native code: nothing here runs it by name, "
                    "but it cannot be inspected", self.where(e)))
                continue
            lower = e.filename.lower()
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                quota.read += 1
                node = self.nested(e, e.filename, executed=False)
                if node is not None:
                    self.root.add(node)
            elif lower.endswith((".pkl", ".debug_pkl")):
                quota.read += 1
                node = self.nested(e, e.filename, executed=id(e) not in theirs)
            else:
                data = torch_zip.sniff_pickle(self.raw, e, budget)
                if data is torch_zip.LATE:
                    quota.late(e.filename)
                elif data is torch_zip.SKIPPED:
                    skipped.append(e.filename)
                elif data is torch_zip.UNFINISHED:
                    self.ckpt.findings.append(_zip_members.unscanned(
                        e.filename, e.file_size, torch_zip.MAX_SNIFF_MEMBER, self.where(e),
                        " for records that are pickles by their bytes, not their name"))
                elif isinstance(data, bytes):
                    quota.read += 1
                    try:
                        run_pickle(self.ckpt, data, self.where(e), executed=False)
                    except CheckpointError as err:
                        self.ckpt.warnings.append(str(err))
        quota.report(self.ckpt.findings, self.label.rstrip("/") or None)
        if skipped:
            self.ckpt.findings.append(Finding(
                NEEDS_TRUST, "unscanned-member",
                f"{len(skipped):,} records ({', '.join(skipped[:3])} ...) were not tried as "
                f"pickles: the {torch_zip.MAX_SNIFF_TOTAL >> 20} MiB spent per archive on "
                "records that are not pickles by name was used up", self.label.rstrip("/") or None))

    def metadata(self) -> dict[str, Any]:
        return {"archive root": self.dir.prefix.rstrip("/") if self.dir else "",
                "records": len(self.dir.entries) if self.dir else 0,
                "graphs": self.graphs, "nodes": sum(self.ops.values()),
                "operators": dict(self.ops.most_common())}


def read_torch_bytes(ckpt: Checkpoint, data: Any, path: str, label: str,
                     executed: bool = True) -> Node | None:
    """What ``torch.load(io.BytesIO(data))`` reads, as the .pt2 loader calls it: a zip
    archive; else a pickle stream (its first pickle runs, then the legacy format). Never a
    tar archive: torch tries tar only on a real file (one with a descriptor), so bytes that
    are both a tar and a pickle are read here as the pickle torch runs."""
    from ckpt_inspector.core.formats import pickle_file

    head = bytes(data[:4])
    if head == b"PK\x03\x04":
        return torch_zip.read_into(ckpt, BytesSource(path, data), label, executed)
    src = BytesSource(path, bytes(data))
    if not executed:
        return pickle_file.read_into(ckpt, src, label, executed=False)
    return pickle_file.read_stream(ckpt, src, label)
