"""The security verdict: ``safe``, ``needs-trust`` or ``dangerous``, with every finding.

Allowlist first: a file is ``safe`` only when every global it would import is
in torch's own ``weights_only`` allowlist and its streams are clean. Known
dangerous modules and callables, imports whose names are computed at load
time, and structural tricks (data after STOP, BUILD on an imported object,
frames that lie, broken streams) make it ``dangerous``. Any other import is
code the user would have to trust: ``needs-trust``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import callables
from ckpt_inspector.core.allowlist import WEIGHTS_ONLY_GLOBALS
from ckpt_inspector.core.calls import RECONSTRUCTORS, Analysis, Use, attribute_name, judge_use
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, SAFE, Finding
from ckpt_inspector.core.pickle.values import Anomaly, Call, GlobalRef, short_repr
from ckpt_inspector.core.tree import Checkpoint, PickleRecord

_MANGLE = re.compile(r"\.___torch_mangle_\d+")
_RANK = {SAFE: 0, NEEDS_TRUST: 1, DANGEROUS: 2}
# findings that say a file of the checkpoint was not scanned (see ScanReport.unscanned)
UNSCANNED_CODES = frozenset({"missing-file", "unreadable-file"})

# Modules whose every name can run commands, touch files or the network, or load code.
DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "socket", "shutil",
    "runpy", "pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal",
    "pip", "pdb", "bdb", "pty", "ctypes", "asyncio", "webbrowser", "importlib", "code",
    "codeop", "commands", "multiprocessing", "signal", "tempfile", "glob", "io", "_io",
    "requests", "urllib", "urllib2", "httplib", "http", "ftplib", "telnetlib", "smtplib",
    "poplib", "imaplib", "nntplib", "xmlrpc", "socketserver", "ssl", "sqlite3", "platform",
    "threading", "_thread", "concurrent", "zipimport", "pkgutil", "site", "timeit", "trace",
    "profile", "cProfile", "pydoc", "venv", "ensurepip", "distutils", "setuptools",
    "aiohttp", "httpx", "paramiko", "sysconfig", "_posixsubprocess", "_winapi", "msvcrt",
    "tarfile", "zipfile", "shelve", "dbm", "mmap",
})
# whole torch submodules that download, compile or load code
DANGEROUS_TORCH = ("torch.hub", "torch.utils.cpp_extension", "torch.package",
                   "torch.jit._serialization")
DANGEROUS_NAMES = frozenset({
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.open", "builtins.getattr",
    "builtins.setattr", "builtins.delattr", "builtins.__import__", "builtins.breakpoint",
    "builtins.input", "builtins.globals", "builtins.locals", "builtins.vars",
    "builtins.execfile", "builtins.file", "builtins.apply", "builtins.reload",
    "builtins.exit", "builtins.quit", "builtins.help", "builtins.memoryview", "builtins.type",
    "functools.reduce",
    "operator.attrgetter", "operator.methodcaller", "operator.itemgetter",
    "operator.getitem", "operator.setitem",
    "types.FunctionType", "types.CodeType", "types.LambdaType", "types.MethodType",
    "types.ModuleType",
    "torch.load", "torch.serialization.load", "torch.serialization._load",
    "torch.serialization._legacy_load", "torch.jit.load", "torch.jit._serialization.load",
    "torch._C.import_ir_module", "torch._C._load_for_lite_interpreter", "torch.hub.load",
    "torch.hub.load_state_dict_from_url", "torch.hub.download_url_to_file",
    "torch.package.PackageImporter", "torch._dynamo.eval_frame", "torch.fx.graph_module",
    "torch.hub._load_local", "operator.call", "_operator.attrgetter", "_operator.methodcaller",
    "_operator.itemgetter", "_functools.reduce",
    "numpy.load", "numpy.lib.npyio.load", "numpy.testing._private.utils.runstring",
    "codecs.open",
})


@dataclass
class ScanReport:
    verdict: str
    findings: list[Finding] = field(default_factory=list)
    globals: list[str] = field(default_factory=list)

    @property
    def unscanned(self) -> list[str]:
        """The files of the checkpoint that were not scanned (missing or unreadable): the
        verdict covers only the rest, so a ``safe`` one is incomplete."""
        return list(dict.fromkeys(f.file or "?" for f in self.findings
                                  if f.code in UNSCANNED_CODES))

    def flagged_names(self) -> list[str]:
        """Imports that made the verdict, most telling first: dangerous ones, then the
        file's own classes, then torch's (``torch.nn.modules...``)."""
        level = {}
        for f in self.findings:
            if f.name:
                level[f.name] = min(level.get(f.name, 2), 0 if f.severity == DANGEROUS else 1)
        ordered = sorted(level, key=lambda n: (level[n],
                                               n.startswith(("torch.", "__torch__.torch.")), n))
        # TorchScript mangles each copy of a class (___torch_mangle_12.Conv2d): one name each
        seen: dict[str, None] = {}
        for name in ordered:
            seen.setdefault(_MANGLE.sub("", name), None)
        return list(seen)


def classify(module: str, name: str) -> str:
    """``safe``, ``needs-trust`` or ``dangerous`` for a bare import of ``module.name`` (what
    it would be called if the stream only named it; uses decide the rest, in :func:`scan`)."""
    full_name = f"{module}.{name}"
    if full_name in WEIGHTS_ONLY_GLOBALS:
        return SAFE
    kind, canon = callables.resolve(module, name)
    use = Use(GlobalRef(module, name, 0, "GLOBAL"), kind, canon)
    if kind == callables.MODULE or (denied(use) and kind != callables.RECORD):
        return DANGEROUS
    return NEEDS_TRUST


def _benign_use(name: str, uses: list[Call], called: set[int]) -> str | None:
    """Why a dangerous callable is harmless as this file uses it, or None.

    ``torch.save`` of some modules pickles a bound method as
    ``getattr(<object made in the file>, "method")``, stored and never called;
    hyper-parameters may hold ``type(None)``. Anything else (getattr on an
    imported module, dunder or computed names, a method the stream then calls,
    type() with 3 arguments) stays dangerous. ``called`` holds the ids of every
    object the stream calls.
    """
    if not uses:
        return None
    if name == "builtins.getattr":
        for c in uses:
            if not (len(c.args) == 2 and isinstance(c.args[0], (Call, GlobalRef))
                    and isinstance(c.args[1], str) and not c.args[1].startswith("__")
                    and c.args[1].isidentifier()):
                return None
            if id(c) in called and attribute_name(c) not in RECONSTRUCTORS:
                return None
        methods = sorted({f"{_name_of(c.args[0])}.{c.args[1]}" for c in uses})
        return (f"reads attribute {', '.join(methods[:3])} of an object or class in the file, "
                "never called")
    if name == "builtins.type" and all(len(c.args) == 1 and id(c) not in called for c in uses):
        return "asks for the type of a value"
    return None


def _name_of(value: Any) -> str:
    if isinstance(value, GlobalRef):
        return value.full_name
    return value.func_name or "?"


_MAX_EVAL_LEN = 4096
_ROT13 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                       "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm")


def _transcode(value: str | bytes, codec: str, decode: bool) -> str | bytes | None:
    """The few codecs obfuscation uses, done by hand: a codec lookup would import
    ``encodings.<name>``, a module named by the file."""
    import binascii

    codec = codec.lower().replace("-", "_")
    if codec in ("rot13", "rot_13") and isinstance(value, str):
        return value.translate(_ROT13)
    text = {"latin1": "latin-1", "latin_1": "latin-1", "iso_8859_1": "latin-1",
            "utf8": "utf-8", "utf_8": "utf-8", "ascii": "ascii"}.get(codec)
    if text:
        if decode and isinstance(value, bytes):
            return value.decode(text)
        if not decode and isinstance(value, str):
            return value.encode(text)
        return None
    if codec in ("base64", "base64_codec") and isinstance(value, bytes):
        return binascii.a2b_base64(value) if decode else binascii.b2a_base64(value)
    if codec in ("hex", "hex_codec") and isinstance(value, bytes):
        return binascii.unhexlify(value) if decode else binascii.hexlify(value)
    return None


_EVALUATED = ("_codecs.decode", "codecs.decode", "_codecs.encode", "codecs.encode", "builtins.str")


def static_value(value: Any, depth: int = 0, memo: dict[int, Any] | None = None
                 ) -> str | bytes | None:
    """What a computed import name evaluates to, for the calls that obfuscation uses
    (``_codecs.decode('bf', 'rot13')``, ``builtins.str(b'os', 'latin1')``), on short
    inputs, importing nothing. None when unknown. Each call is evaluated once (``memo``):
    a stream can reuse one call from the memo at every level."""
    if isinstance(value, (str, bytes)):
        return value if len(value) <= _MAX_EVAL_LEN else None
    if not isinstance(value, Call) or depth > 4:
        return None
    name = value.func_name
    if name not in _EVALUATED or len(value.args) != 2:
        return None
    memo = {} if memo is None else memo
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = None
    args = [static_value(a, depth + 1, memo) for a in value.args]
    result: str | bytes | None = None
    if all(a is not None for a in args):
        try:
            if name != "builtins.str" and isinstance(args[1], str):
                result = _transcode(args[0], args[1], name.endswith("decode"))
            elif name == "builtins.str" and isinstance(args[0], bytes) \
                    and isinstance(args[1], str):
                result = _transcode(args[0], args[1], True)
        except (ValueError, TypeError, UnicodeError):
            result = None
    if isinstance(result, (str, bytes)) and len(result) > _MAX_EVAL_LEN:
        result = None
    memo[id(value)] = result
    return result


def _computed_import(g: GlobalRef) -> tuple[str, str | None]:
    """(message, resolved ``module.name`` or None) for a non-literal import."""
    parts = []
    resolved = []
    memo: dict[int, Any] = {}
    for what in (g.module, g.name):
        value = static_value(what, 0, memo)
        if isinstance(value, bytes):
            value = None  # STACK_GLOBAL wants str: a bytes result fails when loaded
        shown = short_repr(what, 60)
        parts.append(f"{shown} → {value!r}" if isinstance(value, str) else shown)
        resolved.append(value if isinstance(value, str) else None)
    full = f"{resolved[0]}.{resolved[1]}" if None not in resolved else None
    message = ("imports a name computed at load time (" + "; ".join(parts) + "), so "
               "scanners that read names never see it")
    if full:
        message += f": it resolves to {full}"
    return message, full


def denied(use: Use) -> bool:
    """The second opinion: the name, or what it really is, is on a denylist."""
    for full in (use.ref.full_name, use.canonical):
        module = full.rpartition(".")[0]
        if full in DANGEROUS_NAMES or module.startswith(DANGEROUS_TORCH):
            return True
        if module.split(".")[0] in DANGEROUS_MODULES or module in DANGEROUS_MODULES:
            return True
        # a dotted name walks attributes (torch.serialization + "os.system", argparse +
        # "_os.system"); nested classes (Outer.Inner) are the only legitimate use
    attrs = str(use.ref.name).split(".")
    steps = attrs[:-1]
    return any(a in DANGEROUS_MODULES or a.startswith("_") or a.islower() for a in steps) or \
        any(f"builtins.{a}" in DANGEROUS_NAMES for a in attrs[1:])


def _judge(use: Use, invoked: set[int],
           known: frozenset[str] = frozenset()) -> tuple[str, str, str] | None:
    """(severity, code, message) for one imported name, or None when torch allows it (or
    the stream's own loader expects it: ``known``)."""
    name = use.ref.full_name
    renamed = (f" (written as {use.ref.original[0]}.{use.ref.original[1]})"
               if use.ref.original else "")
    judged = judge_use(use, known)
    if denied(use) and use.kind != callables.RECORD and name not in known:
        benign = _benign_use(name, use.called, invoked)
        if benign:
            return (NEEDS_TRUST, "import", f"imports {name}{renamed}, which {benign}; loading "
                    "it with torch needs trust")
        what = judged[1] if judged and judged[0] == DANGEROUS else (
            f"calls {name} with {short_repr(use.called[0].args)}" if use.called
            else f"imports {name}")
        return (DANGEROUS, "dangerous-import",
                f"{what}{renamed}: this can run commands, touch files or load code")
    if judged is None:
        return None
    severity, message = judged
    if severity == DANGEROUS:
        benign = _benign_use(name, use.called, invoked)
        if benign:
            return (NEEDS_TRUST, "import", f"imports {name}{renamed}, which {benign}; loading "
                    "it with torch needs trust")
        return DANGEROUS, "dangerous-call", message + renamed
    return severity, "import", message + renamed


def scan(ckpt: Checkpoint, error: str | None = None) -> ScanReport:
    """Judge a checkpoint from what its reader recorded (never from its data)."""
    findings: list[Finding] = []
    for record in ckpt.pickles:
        findings.extend(_record_findings(record))
    if ckpt.runs_code:
        findings.append(Finding(NEEDS_TRUST, "code", ckpt.runs_code))
    findings.extend(ckpt.findings)
    if error and not any(f.code == "malformed" for f in findings):
        findings.append(Finding(DANGEROUS, "malformed", error))
    verdict = SAFE
    for f in findings:
        if _RANK.get(f.severity, 0) > _RANK[verdict]:
            verdict = f.severity
    return ScanReport(verdict, findings, ckpt.global_names())


def _record_findings(record: PickleRecord) -> list[Finding]:
    """What one pickle the file holds imports, calls and does wrong."""
    findings: list[Finding] = []
    member = record.member or None
    analysis = Analysis(record.result)
    calls_by_func: dict[int, list[Call]] = {}
    for c in record.result.calls:
        calls_by_func.setdefault(id(c.func), []).append(c)
    for name, use in analysis.uses.items():
        judged = _judge(use, analysis.invoked, record.known_classes)
        if judged is not None:
            findings.append(Finding(judged[0], judged[1], judged[2], member,
                                    use.ref.offset, name, record.file))
    for v in analysis.verdicts:
        findings.append(Finding(v.severity, v.code, v.message, member, v.offset, v.name,
                                record.file))
    for a in record.result.anomalies:
        findings.append(_anomaly_finding(record, a, calls_by_func))
    # streams torch would unpickle must be clean; a member found by sniffing only
    # matters for what it imports
    broken = DANGEROUS if record.executed else "info"
    if record.trailing > 0:
        findings.append(Finding(broken, "trailing-data",
                                f"{record.trailing:,} bytes follow the end of the pickle",
                                member, record.result.end, file=record.file))
    if record.error:
        findings.append(Finding(broken, "malformed", record.error, member, file=record.file))
    return findings


def _anomaly_finding(record: PickleRecord, a: Anomaly,
                     calls_by_func: dict[int, list[Call]]) -> Finding:
    level = DANGEROUS if record.executed or a.code == "dynamic-import" else "info"
    message, name = a.message, None
    if a.code == "dynamic-import":
        ref = next((g for g in record.result.globals if g.offset == a.offset), None)
        if ref is not None:
            message, name = _computed_import(ref)
            uses = calls_by_func.get(id(ref), [])
            if uses:
                message += f", and calls it with {short_repr(uses[0].args)}"
    return Finding(level, a.code, message, record.member or None, a.offset, name, record.file)
