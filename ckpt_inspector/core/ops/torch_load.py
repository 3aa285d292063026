"""Loading a checkpoint with torch itself: only for a file the user chose to trust.

The rules, from least to most trust:

1. ``torch.load(weights_only=True)``: what every ``safe`` file loads with.
2. For a ``needs-trust`` file whose every import outside torch's allowlist is a
   ``torch.nn`` or ``torchvision`` class: the same weights-only loader, with
   exactly those classes allowed through ``torch.serialization.safe_globals``
   (they come from the installed libraries, not from the file) -- each one checked
   here to be an ``nn.Module`` subclass (or on :data:`EXTRA_CLASSES`): a *function*
   in safe_globals would be called by the loader.
3. Only with ``run_code``: ``torch.load(weights_only=False)`` (or
   ``torch.jit.load`` for TorchScript), which runs whatever the file asks for.
4. A ``dangerous`` file loads only with ``run_code`` *and* ``allow_dangerous``.

A checkpoint made of several files (a sharded Hugging Face model, a DCP folder, GGUF
splits, ... : a folder or an index file) has no one file torch loads: its state_dict is
assembled from what our readers read of each file (tensors copied into torch, plain
values as they are), so nothing in any of them runs and no consent is needed.

Used by ``ckpt-inspector load`` and, through that command in a child process, by
the app: torch is never imported into the window's process.
"""

from __future__ import annotations

import importlib
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.scan import ScanReport, scan
from ckpt_inspector.core.summary import counted
from ckpt_inspector.core.tree import Checkpoint

TRUSTED_PACKAGES = ("torch.nn.", "torchvision.")


class TrustError(CheckpointError):
    """The file needs more trust than the caller gave."""


@dataclass
class LoadResult:
    obj: Any
    mode: str  # weights-only | weights-only + allowed classes | full (ran the file's code) | ...
    verdict: str
    seconds: float
    allowed: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # entries not rebuilt (assembled)

    def describe(self) -> dict[str, Any]:
        """Counts of what came back, for people and JSON (never the tensors)."""
        import torch

        count = nbytes = 0
        devices: set[str] = set()
        seen: set[int] = set()
        stack = [self.obj]
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            if isinstance(v, torch.Tensor):
                count += 1
                nbytes += v.numel() * v.element_size()
                devices.add(str(v.device))
            elif isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, (list, tuple)):
                stack.extend(v)
            elif isinstance(v, (torch.nn.Module, torch.jit.ScriptModule)):
                stack.extend(v.state_dict().values())
        kind = type(self.obj)
        return {"mode": self.mode, "verdict": self.verdict, "type": f"{kind.__module__}."
                f"{kind.__qualname__}", "tensors": count, "nbytes": nbytes,
                "devices": sorted(devices), "seconds": self.seconds,
                "allowed_classes": self.allowed,
                **({"left_out": self.left_out} if self.left_out else {})}


@dataclass(frozen=True)
class Question:
    """One question to put to the user before loading: the safe answer is no."""

    title: str
    text: str
    accept: str  # the words of the button that says yes


@dataclass(frozen=True)
class Consent:
    """What loading a file with torch takes: the questions to ask, in order (every one
    answered yes), then the ``load`` flags those answers stand for."""

    questions: tuple[Question, ...] = ()
    flags: tuple[str, ...] = ()


def consent(report: ScanReport, ckpt: Checkpoint, name: str | None = None) -> Consent:
    """The consent the rules above call for to load ``ckpt`` (scanned as ``report``);
    ``name`` is how the questions call the file (its file name by default)."""
    name = name if name is not None else os.path.basename(ckpt.path)
    if ckpt.files:  # several files: assembled from our readers, nothing runs
        return Consent()
    if report.verdict == "safe" and ckpt.format != "torchscript":
        return Consent()
    if report.verdict == "dangerous":
        first = next(f for f in report.findings if f.severity == "dangerous")
        return Consent((
            Question("Dangerous file", f"{name} is dangerous: {first.message}.\n\nLoading it "
                     "with torch runs that on this computer.", "Continue…"),
            Question("Run a dangerous file?", f"Last check: load {name} and let it run its "
                     "code?", "Run it anyway")), ("--run-code", "--allow-dangerous"))
    imports = report.flagged_names()
    if ckpt.format != "torchscript" and imports and all(
            n.startswith(TRUSTED_PACKAGES) for n in imports):
        listed = ", ".join(imports[:4]) + (" …" if len(imports) > 4 else "")
        return Consent((Question(
            "Load with torch", f"{name} needs these torch.nn / torchvision classes: {listed}."
            "\n\nThey will be allowed by name for torch's weights-only loader, from your "
            "installed torch and torchvision; nothing from the file runs.", "Load"),))
    what = (ckpt.runs_code or "") if ckpt.format == "torchscript" else \
        f"it imports {', '.join(imports[:4])}"
    return Consent((Question(
        "Run this file's code?", f"Loading {name} runs code from the file: {what}.\n\nDo you "
        "trust where it came from?", "Run its code"),), ("--run-code",))


def _imports_needing_trust(report: ScanReport) -> list[str]:
    return sorted({f.name for f in report.findings if f.severity == "needs-trust" and f.name})


# classes besides nn.Module subclasses that the weights-only loader may build for a file
EXTRA_CLASSES = ("torch.nn.parameter.UninitializedParameter",
                 "torch.nn.parameter.UninitializedBuffer", "torch.nn.parameter.Buffer")


def allowed_class(name: str) -> Any:
    """The class ``name`` from the installed torch.nn or torchvision, if it is one the
    weights-only loader may build: an ``nn.Module`` subclass or one of
    :data:`EXTRA_CLASSES`. Anything else (a function such as ``torchvision.io.write_file``,
    a module, a value) raises TrustError: ``safe_globals`` would let the loader *call* it.
    Runs in the loading process (torch imported); the file only named the class."""
    import torch

    module, _, attr = name.rpartition(".")
    if not name.startswith(TRUSTED_PACKAGES) or not module or "." in attr:
        raise TrustError(f"{name} is not a torch.nn or torchvision class")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise TrustError(f"a class the file names is not in the installed torch or "
                         f"torchvision: {err}") from None
    if not isinstance(obj, type):
        raise TrustError(f"{name} is a {type(obj).__name__}, not a class: loading would "
                         "call it; it takes 'run code'")
    if issubclass(obj, torch.nn.Module) or f"{obj.__module__}.{obj.__qualname__}" in \
            EXTRA_CLASSES:
        return obj
    raise TrustError(f"{name} is a class but not an nn.Module: it takes 'run code'")


def trusted_load(path: str, map_location: str = "cpu", *, run_code: bool = False,
                 allow_dangerous: bool = False) -> LoadResult:
    """Load ``path`` with torch following the rules above; raises TrustError otherwise."""
    from ckpt_inspector.core.io.opening import is_url
    from ckpt_inspector.core.layouts import layout_for

    if is_url(path):  # torch reads local files: the tensors come from our own readers
        if run_code:
            raise TrustError("'run code' loads a local file with torch: download it first "
                             "(a URL is loaded from ckpt-inspector's own readers, no code run)")
        return assembled(path, map_location)
    if os.path.isdir(path) or layout_for(path) is not None:
        return assembled(path, map_location)
    ckpt = open_checkpoint(path)
    report = scan(ckpt)
    if report.verdict == "dangerous" and not (run_code and allow_dangerous):
        names = ", ".join(report.flagged_names()[:3])
        raise TrustError(f"the file is dangerous{f' ({names})' if names else ''}: loading it "
                         "runs that code; it takes both 'run code' and 'allow dangerous'")
    if ckpt.format in ("onnx", "archive"):
        raise TrustError(f"{ckpt.format} files are not loaded with torch")
    import torch

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes about experimental dtypes
        if ckpt.format == "safetensors":
            from safetensors.torch import load_file

            obj = load_file(path, device=map_location)
            return LoadResult(obj, "safetensors", report.verdict, time.perf_counter() - start)
        if ckpt.format == "torchscript":
            if not run_code:
                raise TrustError("a TorchScript archive runs its code when loaded: it takes "
                                 "'run code'")
            obj = torch.jit.load(path, map_location=map_location)
            return LoadResult(obj, "torch.jit.load (ran the archive's code)", report.verdict,
                              time.perf_counter() - start)
        if report.verdict == "safe":
            obj = torch.load(path, map_location=map_location, weights_only=True)
            return LoadResult(obj, "weights-only", report.verdict, time.perf_counter() - start)
        names = _imports_needing_trust(report)
        if names and report.verdict == "needs-trust" and all(
                n.startswith(TRUSTED_PACKAGES) for n in names):
            classes = [allowed_class(n) for n in names]
            with torch.serialization.safe_globals(classes):
                obj = torch.load(path, map_location=map_location, weights_only=True)
            return LoadResult(obj, "weights-only + allowed classes", report.verdict,
                              time.perf_counter() - start, names)
        if not run_code:
            other = [n for n in names if not n.startswith(TRUSTED_PACKAGES)]
            shown = ", ".join(other[:4]) or "code"
            raise TrustError(f"the file imports {shown}, which is not a torch.nn or "
                             "torchvision class: loading it runs the file's code; it takes "
                             "'run code'")
        obj = torch.load(path, map_location=map_location, weights_only=False)
        return LoadResult(obj, "full (ran the file's code)", report.verdict,
                          time.perf_counter() - start)


PLAIN_VALUES = ("scalar", "str", "bytes", "none")


def assembled(path: str, map_location: str = "cpu") -> LoadResult:
    """The state_dict of a checkpoint made of several files, ``{dotted key: tensor or
    plain value}``, built from what our readers read (see the module's note): no code in
    any file runs. A tensor that cannot be read (a missing shard) is a CheckpointError."""
    import torch  # noqa: F401  (its import is not the loading time)

    from ckpt_inspector.core.layouts import open_checkpoint as open_layout
    from ckpt_inspector.core.tensors import to_torch
    from ckpt_inspector.core.tree import key_of

    start = time.perf_counter()
    ckpt = open_layout(path)
    verdict = scan(ckpt).verdict
    tensors = list(ckpt.tensors())
    damaged = [(p, n.tensor) for p, n in tensors if n.tensor is not None and (
        n.tensor.problem or n.tensor.storage is None or n.tensor.storage.source is None)]
    if damaged:
        p, t = damaged[0]
        raise CheckpointError(f"{counted(len(damaged), 'tensor')} cannot be read, e.g. "
                              f"{key_of(p)!r}: {t.problem or 'no data'}")
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for node in ckpt.root.walk():
            if node.kind == "tensor" and node.tensor is not None:
                out[key_of(node.path())] = to_torch(node.tensor, map_location)
            elif node.kind in PLAIN_VALUES and node.parent is not None:
                out[key_of(node.path())] = node.value
    # entries that are neither tensors nor plain values (an object a pickle would build,
    # maybe the payload that made the verdict): not rebuilt, so left out
    left = [key_of(n.path()) for n in ckpt.root.children
            if n.kind not in ("tensor", "dict", "list", *PLAIN_VALUES)
            and not any(d.kind == "tensor" for d in n.walk())]
    files = counted(len(ckpt.files), "file") if ckpt.files else "one file"
    mode = f"assembled from {files} by ckpt-inspector's readers (no code ran)"
    return LoadResult(out, mode, verdict, time.perf_counter() - start, left_out=left)
