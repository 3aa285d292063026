"""Will ``torch.load(path, map_location="cpu")`` work? The answer before anyone runs torch.

From what the readers recorded (:mod:`weights_only` says what torch's weights-only unpickler
refuses) and the scan's verdict, for the installed torch (whose default has been
``weights_only=True`` since 2.6):

- ``weights_only``: whether that call succeeds; ``blocked_by``: the globals it refuses (what
  ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists);
- ``fix``: code (imports, then ``torch.serialization.add_safe_globals([...])``) that makes it
  succeed, run before it -- only for a file that is not dangerous and whose refusals an
  allowlist can lift; otherwise None and ``problem`` says why;
- what is true for each format (``loader``: safetensors, TorchScript, ONNX, GGUF, pt2 files
  are not ``torch.load`` files), for older torch (``weights_only=False`` by default: the
  file's imports run), for ``mmap=True`` (legacy files cannot be mapped), and for a file
  saved on a GPU (this prediction is for ``map_location="cpu"``).

Nothing here imports torch: the allowlist was generated from torch (``allowlist_from``), and
the installed version is read from its package metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import installed
from ckpt_inspector.core.allowlist import GENERATED_FROM
from ckpt_inspector.core.findings import DANGEROUS, SAFE, Finding
from ckpt_inspector.core.safe_globals_fix import fix_code
from ckpt_inspector.core.scan import ScanReport
from ckpt_inspector.core.torch_load_formats import (
    COMPRESSED,
    COMPRESSED_LOADER,
    JOBLIB_LOADER,
    LAYOUT_NOTES,
    LOADERS,
    NOT_WEIGHTS,
    NPZ_LOADER,
    OUTSIDE_ROOT,
    READS_SAFETENSORS_PATHS,
    SAFETENSORS_LOADER,
    TORCH_LOAD_FORMATS,
    WHY_NOT,
    ZIP_FORMATS,
    loader_text,
    mmap_text,
)
from ckpt_inspector.core.tree import Checkpoint, PickleRecord
from ckpt_inspector.core.weights_only import check, loaded_streams, zip_streams


def installed_torch() -> str | None:
    """The installed torch's version, from its package metadata (importing torch takes
    seconds); None when torch is not installed."""
    return installed.version("torch")


def _release(version: str | None) -> tuple[int, ...] | None:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return tuple(int(x or 0) for x in m.groups()) if m else None


# why a file could not be read where torch's own readers stop too: its data ends (a cut
# download) or torch's zip reader refuses the archive. A bound of this reader (a LONG4 over
# 1 MiB, 25 million opcodes, a million records) is not one: torch reads on past it.
TORCH_STOPS_TOO = ("truncated", "torch cannot open this zip archive")


@dataclass
class TorchLoadPrediction:
    """What ``torch.load(path, map_location="cpu")`` would do with its default
    ``weights_only=True``."""

    weights_only: bool  # it succeeds
    blocked_by: list[str] = field(default_factory=list)  # globals torch refuses
    fix: str | None = None  # code that makes it succeed, run before torch.load
    dangerous: bool = False  # do not load this file with torch at all
    # dangerous only because it could not be read whole: nothing in what was read is
    unread: bool = False
    problem: str | None = None  # why it fails that no allowlist fixes, or why there is no fix
    loader: str | None = None  # what reads this format, when torch.load does not (only)
    older_torch: str | None = None  # torch < 2.6, whose torch.load runs the file's imports
    mmap: str | None = None  # torch.load(..., mmap=True)
    note: str | None = None  # devices, torch versions
    files: list[dict[str, Any]] = field(default_factory=list)  # per file, for many files
    # the formats as torch.load takes them (a zip with a data.pkl is torch-zip to it)
    formats: set[str] = field(default_factory=set, repr=False)

    def to_json(self) -> dict[str, Any]:
        torch = installed_torch()
        release = _release(torch)
        out: dict[str, Any] = {
            "weights_only": self.weights_only,
            "blocked_by": self.blocked_by,
            "fix": self.fix,
            "dangerous": self.dangerous,
            "map_location": "cpu",
            "torch": torch,
            "allowlist_from": GENERATED_FROM,
            "default_weights_only": release >= (2, 6) if release else None,
        }
        for key in ("problem", "loader", "older_torch", "mmap", "note"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.files:
            out["files"] = self.files
        return out

    @property
    def works(self) -> str:
        """"torch.load(path) works", or of each file of a checkpoint of several."""
        if len(self.files) == 1:
            return f"torch.load works on its one file, {self.files[0]['path']}"
        return (f"torch.load works on each of its {len(self.files):,} files" if self.files
                else "torch.load(path) works")

    @property
    def fails(self) -> str:
        """"torch.load(path) fails", or on how many files of a checkpoint of several."""
        if not self.files:
            return "torch.load(path) fails"
        bad = sum(not f["weights_only"] for f in self.files)
        if len(self.files) == 1:
            return f"torch.load fails on its one file, {self.files[0]['path']}"
        return f"torch.load fails on {bad:,} of its {len(self.files):,} files"

    def headline(self) -> str:
        """One line: will it load, and if not, what to do."""
        if self.dangerous and self.unread:
            return ("do not load this file with torch: it could not be read whole, so nothing "
                    "vouches for it")
        if self.dangerous:
            refused = (f" (weights_only=True refuses {_listed(self.blocked_by)})"
                       if self.blocked_by else "")
            return f"do not load this file with torch: it is dangerous{refused}"
        if self.weights_only:
            return f"{self.works} (weights_only=True, the default since torch 2.6)"
        if self.blocked_by and self.fix:
            return (f"{self.fails}: weights_only=True refuses "
                    f"{_listed(self.blocked_by)}; allowing {_them(self.blocked_by)} fixes it")
        parts = [f"{self.fails}: {self.problem or 'not a torch.load file'}"]
        if self.loader:
            parts.append(self.loader if self.loader.startswith(("extract", "unpack"))
                         else f"read it with {self.loader}")
        return "; ".join(parts)

    def lines(self) -> list[str]:
        """What ``scan`` prints: the headline, then the fix (or why there is none)."""
        out = [self.headline()]
        if self.fix:
            allowed = re.findall(r"^    (.+),$", self.fix, re.M)
            call = ("torch.serialization.add_safe_globals([" + ", ".join(allowed) + "])"
                    if allowed else "")
            out.append("fix: " + (call or self.fix.splitlines()[-1])
                       + ", after their imports (the code: scan --json, torch_load.fix)")
        elif self.blocked_by and self.problem and not self.dangerous:
            out.append(f"no fix: {self.problem}")
        return out


def _listed(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _them(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"


@dataclass
class _FileAnswer:
    weights_only: bool
    blocked: list[tuple[str, str]]
    names: list[tuple[str, str]]  # what a fix allows
    by_import: dict[str, list[str]]
    problem: str | None


def _answer(fmt: str, path: str, records: list[PickleRecord], metadata: dict[str, Any],
            findings: list[Finding]) -> tuple[_FileAnswer, str]:
    """One file: what torch.load does with it, and its format as torch.load takes it."""
    if fmt in ZIP_FORMATS:
        if any(f.code == "outside-root" and not f.member for f in findings):
            return _FileAnswer(False, [], [], {}, OUTSIDE_ROOT), fmt
        kind, streams = zip_streams(records)
        if kind == "torch-zip":
            return _torch_file(streams, metadata), kind
        return _other_file(kind or fmt, path), kind or fmt
    if fmt == "torch-legacy":
        return _torch_file(loaded_streams(records), metadata), fmt
    return _other_file(fmt, path), fmt


def _torch_file(streams: list[PickleRecord], metadata: dict[str, Any]) -> _FileAnswer:
    """A torch.save file (zip or legacy): what the weights-only unpickler does with the
    ``streams`` it unpickles."""
    result = check(streams)
    problem = result.problems[0] if result.problems else None
    if "tar" in str(metadata.get("container", "")):  # torch < 0.4's tar format
        problem = ("torch.load refuses weights_only=True for the legacy .tar format "
                   "(torch < 0.4): only weights_only=False reads it")
    imported = {n for names in result.by_import.values() for n in names}
    names = [(m, n) for m, n in result.blocked if f"{m}.{n}" not in imported]
    names += result.also_allow
    return _FileAnswer(result.loads and problem is None, result.blocked, names,
                       result.by_import, problem)


def _other_file(fmt: str, path: str) -> _FileAnswer:
    """A file torch.load does not read as a torch.save file."""
    if fmt == "safetensors" and READS_SAFETENSORS_PATHS and path.lower().endswith(
            ".safetensors"):
        return _FileAnswer(True, [], [], {}, None)
    return _FileAnswer(False, [], [], {}, WHY_NOT.get(fmt, f"torch.load does not read "
                                                           f"{fmt} files"))


def _wrapped(pred: TorchLoadPrediction, seen: str, metadata: dict[str, Any]) -> None:
    """The loader of a compressed file, an .npz and a joblib pickle."""
    container = metadata.get("container")
    if seen == "archive" and container in COMPRESSED:
        if pred.problem == WHY_NOT["archive"]:
            pred.problem = f"a {container}-compressed file: torch.load cannot read it as it is"
        pred.loader = COMPRESSED_LOADER
    elif seen == "archive" and container == "npz":
        if pred.problem == WHY_NOT["archive"]:
            pred.problem = ("a NumPy .npz archive (numpy.savez), not a torch.save file: "
                            "torch.load cannot read it")
        pred.loader = NPZ_LOADER
    elif seen == "pickle" and metadata.get("written by") == "joblib.dump":
        pred.loader = JOBLIB_LOADER


def predict(ckpt: Checkpoint, report: ScanReport, error: str | None = None,
            devices: dict[str, int] | None = None) -> TorchLoadPrediction:
    """What ``torch.load(ckpt.path, map_location="cpu")`` would do (``report``: its scan;
    ``error``: why it could not be read whole, if it could not; ``devices``: where its tensors
    were saved, when the caller has counted them already: else they are counted here)."""
    dangerous = report.verdict == DANGEROUS
    if ckpt.files:
        pred = _many_files(ckpt, report)
    else:
        answer, seen = _answer(ckpt.format, ckpt.path, ckpt.pickles, ckpt.metadata,
                               ckpt.findings)
        pred = _prediction(answer, dangerous)
        pred.formats = {seen}
        pred.loader = loader_text(seen, answer.weights_only)
        pred.mmap = mmap_text(seen)
        _wrapped(pred, seen, ckpt.metadata)
    if error:
        pred.weights_only, pred.fix = False, None
        pred.problem = (f"ckpt-inspector could not read it whole ({error}): torch.load most "
                        "likely fails too")
    pred.dangerous = dangerous
    # nothing dangerous in what was read, and torch stops where this reader did: only the
    # failure to read it all (a truncated download) makes it so, not a payload torch runs
    pred.unread = dangerous and error is not None and all(
        f.code == "malformed" and any(m in f.message for m in TORCH_STOPS_TOO)
        for f in report.findings if f.severity == DANGEROUS)
    if dangerous:
        pred.fix = pred.mmap = None
    pred.older_torch = _older_torch(ckpt, report, pred)
    pred.note = _note(ckpt, pred, devices)
    return pred


def _prediction(answer: _FileAnswer, dangerous: bool) -> TorchLoadPrediction:
    pred = TorchLoadPrediction(answer.weights_only, [f"{m}.{n}" for m, n in answer.blocked],
                               problem=answer.problem)
    if not answer.weights_only and answer.problem is None and not dangerous:
        pred.fix = fix_code(answer.names, answer.by_import)
        if pred.fix is None:
            pred.problem = ("it names globals that are not Python identifiers: no code can "
                            "allow them")
    elif dangerous and answer.blocked:
        pred.problem = ("it is dangerous: allowing what it imports would let the file run "
                        "its payload")
    return pred


def _many_files(ckpt: Checkpoint, report: ScanReport) -> TorchLoadPrediction:
    """A checkpoint of several files: torch.load reads one file at a time, so say it of
    each (a folder of .distcp or GGUF files has none)."""
    fmt = ckpt.format
    weights = [f for f in ckpt.files if f.get("format") not in NOT_WEIGHTS or f.get("problem")]
    weights += [{**f, "shown": False} for f in ckpt.verdict_files]  # they count as well
    if fmt in LOADERS or not weights:
        answer = _other_file(fmt, ckpt.path)
        pred = _prediction(answer, report.verdict == DANGEROUS)
        pred.loader = LOADERS.get(fmt)
        pred.formats = {fmt}
        return pred
    files: list[dict[str, Any]] = []
    pred_formats: set[str] = set()
    blocked: set[tuple[str, str]] = set()
    names: dict[tuple[str, str], None] = {}
    by_import: dict[str, list[str]] = {}
    problems: list[str] = []
    for f in weights:
        rel = str(f.get("path"))
        inner = f.get("format")
        seen = str(inner)
        if f.get("problem"):
            answer = _FileAnswer(False, [], [], {}, f"the file is {f['problem']}"
                                 if f["problem"] == "missing" else str(f["problem"]))
        else:
            answer, seen = _answer(seen, rel, [r for r in ckpt.pickles if r.file == rel], {},
                                   [x for x in ckpt.findings if x.file == rel])
        pred_formats.add(seen)
        entry: dict[str, Any] = {"path": rel, "format": inner,
                                 "weights_only": answer.weights_only,
                                 "blocked_by": [f"{m}.{n}" for m, n in answer.blocked]}
        if answer.problem:
            entry["problem"] = answer.problem
            problems.append(f"{rel}: {answer.problem}")
        if f.get("shown") is False:
            entry["shown"] = False  # read for the verdict only
        files.append(entry)
        blocked.update(answer.blocked)
        names.update(dict.fromkeys(answer.names))
        for module, allowed in answer.by_import.items():
            by_import.setdefault(module, []).extend(allowed)
    merged = _FileAnswer(all(e["weights_only"] for e in files), sorted(blocked), list(names),
                         by_import, problems[0] if problems else None)
    pred = _prediction(merged, report.verdict == DANGEROUS)
    pred.files = files
    pred.formats = pred_formats
    if "safetensors" in pred_formats:
        pred.loader = f"{SAFETENSORS_LOADER} for each file"
    if pred_formats <= set(TORCH_LOAD_FORMATS):
        pred.mmap = mmap_text("torch-legacy" if "torch-legacy" in pred_formats else "torch-zip")
    return pred


def _older_torch(ckpt: Checkpoint, report: ScanReport, pred: TorchLoadPrediction
                 ) -> str | None:
    """What a plain torch.load(path) does in torch < 2.6, whose default is
    weights_only=False (the full unpickler)."""
    fmt = ckpt.format
    torch_files = bool(pred.formats & set(TORCH_LOAD_FORMATS))
    before = "torch < 2.6 (weights_only=False by default)"
    if pred.unread:
        return (f"{before}: nothing dangerous is in what could be read; what could not be "
                "read is not known")
    if report.verdict == DANGEROUS and (torch_files or fmt == "pickle"):
        return f"{before}: a plain torch.load(path) runs this file's payload"
    if "torchscript" in pred.formats:
        return f"{before}: torch.load hands it to torch.jit.load"
    if fmt == "pickle":
        return (f"{before}: torch.load unpickles it in full, running what it imports, "
                "before it fails")
    if not torch_files:
        return None
    if report.verdict != SAFE:
        names = report.flagged_names() or pred.blocked_by
        text = f"{before}: a plain torch.load(path) imports {_listed(names)} and runs their code"
        if pred.fix:
            text += ("; pass weights_only=True (torch >= 1.13) with the fix (add_safe_globals: "
                     "torch >= 2.4) to allow only those")
        return text
    return (f"{before}: loads it with the full unpickler; it names only what torch allows, "
            "so nothing else runs")


def _note(ckpt: Checkpoint, pred: TorchLoadPrediction, devices: dict[str, int] | None
          ) -> str | None:
    """Devices the tensors were saved on (this prediction is for map_location='cpu'), and an
    installed torch other than the one the allowlist came from."""
    notes = []
    if pred.files:
        hidden = sum(f.get("shown") is False for f in pred.files)
        also = (f" ({hidden:,} of them not shown: what loaders of the folder torch.load "
                "too, read for the verdict)" if hidden else "")
        notes.append(f"{len(pred.files):,} file{'s' if len(pred.files) != 1 else ''}{also}: "
                     "torch.load reads one at a time, each answered on its own"
                     + ("; the fix covers them all" if pred.fix else ""))
        if ckpt.format in LAYOUT_NOTES:
            notes.append(LAYOUT_NOTES[ckpt.format])
    torch_files = bool(pred.formats & set(TORCH_LOAD_FORMATS))
    if devices is None and torch_files:  # (other formats have no saved-on device to warn of)
        devices = dict.fromkeys(n.tensor.device for n in ckpt.root.walk() if n.kind == "tensor"
                                and n.tensor is not None) if ckpt.root is not None else {}
    gpu = sorted(d for d in devices or () if d and not d.startswith("cpu"))
    if gpu and torch_files:
        notes.append(f"saved on {', '.join(gpu[:4])}: this is for map_location='cpu'; without "
                     "it torch.load puts the tensors back there, and fails where that "
                     "device is missing")
    torch = installed_torch()
    if torch and _release(torch) != _release(GENERATED_FROM):
        notes.append(f"predicted with torch {GENERATED_FROM}'s allowlist; torch {torch} is "
                     "installed")
    return "; ".join(notes) or None
