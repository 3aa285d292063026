"""What torch's weights-only unpickler would do with the pickles ``torch.load`` reads, told
from what our interpreter recorded of them (nothing is imported, nothing is run).

torch's unpickler (``torch/_weights_only_unpickler.py``) refuses a file when

- a ``GLOBAL`` names something outside its allowlist (:mod:`allowlist`) and outside what
  the user allowed with ``torch.serialization.add_safe_globals``: these are the names
  ``torch.serialization.get_unsafe_globals_in_checkpoint`` lists, and what a fix allows;
- the stream uses an opcode it does not read (protocols 3-5 write some: ``FRAME``,
  ``BINBYTES``, ``STACK_GLOBAL``...; so do POP, DUP and the text opcodes);
- ``SETITEM(S)`` fills anything but a dict, ``OrderedDict`` or ``Counter`` (a non-empty
  ``defaultdict``), ``APPEND(S)`` anything but a list (a ``deque``), or ``BUILD`` sets the
  state of an object whose type it was not told about (a numpy dtype is built by
  ``numpy.dtype`` but is a ``numpy.dtypes.Float64DType``: that class must be allowed too).

The first kind is what ``add_safe_globals`` fixes; the others no allowlist can.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ckpt_inspector.core.allowlist import (
    ALLOWED_AFTER_IMPORT,
    ALLOWED_AFTER_IMPORT_TORCH,
    BLOCKED_MODULES,
    IMPORT_MAPPING,
    NAME_MAPPING,
    WEIGHTS_ONLY_GLOBALS,
    WEIGHTS_ONLY_OPCODES,
)
from ckpt_inspector.core.pickle.values import Call, GlobalRef
from ckpt_inspector.core.tree import PickleRecord

ALLOWED = WEIGHTS_ONLY_GLOBALS | ALLOWED_AFTER_IMPORT_TORCH  # what a fresh `import torch` allows
# the only objects its SETITEM(S) fills besides a plain dict
DICT_TARGETS = frozenset({"collections.OrderedDict", "collections.Counter"})
# classes whose pickles APPEND to an object that is not a list (a list subclass allowed by
# add_safe_globals is filled; these are not list subclasses)
NOT_LISTS = frozenset({"collections.deque"})
# names that no allowlist should take in: allowing them turns the weights-only load off
NEVER_ALLOW = {
    "torch.storage._load_from_bytes": "it torch.load()s bytes in the file with "
                                      "weights_only=False",
}
NUMPY_DTYPE_NAMES = ("numpy.dtype",)
# numpy's pickled type codes (no byte order: that is in the dtype's state) -> DType class
_DTYPE_CLASSES = {
    "b1": "BoolDType", "i1": "Int8DType", "u1": "UInt8DType", "i2": "Int16DType",
    "u2": "UInt16DType", "i4": "Int32DType", "u4": "UInt32DType", "i8": "Int64DType",
    "u8": "UInt64DType", "f2": "Float16DType", "f4": "Float32DType", "f8": "Float64DType",
    "f12": "LongDoubleDType", "f16": "LongDoubleDType", "c8": "Complex64DType",
    "c16": "Complex128DType", "c24": "CLongDoubleDType", "c32": "CLongDoubleDType",
}
# codes with a size that varies (a string's length, an object's pointer): by their kind
_KIND_DTYPES = {"O": "ObjectDType", "U": "StrDType", "S": "BytesDType", "V": "VoidDType",
                "M": "DateTime64DType", "m": "TimeDelta64DType"}
OPCODE_NAMES = {0x8C: "SHORT_BINUNICODE", 0x94: "MEMOIZE", 0x95: "FRAME", 0x93: "STACK_GLOBAL",
                0x92: "NEWOBJ_EX", 0x8B: "LONG4", 0x43: "SHORT_BINBYTES", 0x42: "BINBYTES",
                0x8E: "BINBYTES8", 0x96: "BYTEARRAY8", 0x8D: "BINUNICODE8", 0x54: "BINSTRING",
                0x90: "ADDITEMS", 0x91: "FROZENSET", 0x6C: "LIST", 0x64: "DICT", 0x30: "POP",
                0x31: "POP_MARK", 0x32: "DUP", 0x67: "GET", 0x70: "PUT", 0x49: "INT",
                0x4C: "LONG", 0x46: "FLOAT", 0x53: "STRING", 0x56: "UNICODE", 0x50: "PERSID",
                0x69: "INST", 0x6F: "OBJ", 0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4"}


@dataclass
class WeightsOnlyCheck:
    """What torch's weights-only unpickler would refuse in a file's streams."""

    blocked: list[tuple[str, str]] = field(default_factory=list)  # (module, name), sorted
    problems: list[str] = field(default_factory=list)  # refusals no allowlist fixes
    also_allow: list[tuple[str, str]] = field(default_factory=list)  # classes no GLOBAL names
    # a module whose import registers some of the blocked names -> those names
    by_import: dict[str, list[str]] = field(default_factory=dict)

    @property
    def loads(self) -> bool:
        return not self.blocked and not self.problems

    @property
    def blocked_names(self) -> list[str]:
        return [f"{m}.{n}" for m, n in self.blocked]


def torch_spelling(ref: GlobalRef) -> tuple[str, str]:
    """``(module, name)`` as torch's unpickler reads a GLOBAL: the bytes in the file, mapped
    by *its* Python 2 table (for every protocol), not Python's."""
    module, name = ref.original or (str(ref.module), str(ref.name))
    if (module, name) in NAME_MAPPING:
        return NAME_MAPPING[(module, name)]
    return IMPORT_MAPPING.get(module, module), name


def loaded_streams(records: Iterable[PickleRecord]) -> list[PickleRecord]:
    """The streams torch.load unpickles: executed ones, less checkpoints embedded in another
    stream's bytes (``torch.storage._load_from_bytes``: torch reads those only once that
    name is allowed, and ``get_unsafe_globals_in_checkpoint`` never looks inside)."""
    executed = [r for r in records if r.executed]
    members = {r.member for r in executed if r.member}
    return [r for r in executed
            if not any(r.member.startswith(m + "/") for m in members if m != r.member)]


def _at_root(member: str, name: str) -> bool:
    """``member`` is ``<root folder>/<name>`` (torch's zip reader ignores case)."""
    m = member.rstrip("/").lower()
    return m.count("/") == 1 and m.endswith("/" + name)


def zip_streams(records: Iterable[PickleRecord]) -> tuple[str | None, list[PickleRecord]]:
    """What torch.load does with a zip archive, by its own rules: ``("torchscript", [])``
    when it holds a ``constants.pkl`` record (torch.load hands it to torch.jit.load, or
    refuses it with weights_only=True); ``("torch-zip", [data.pkl's stream])`` when it
    holds ``<root>/data.pkl`` (the first such record: the one torch's reader finds, which
    our reader reads first; a .pt2 or an archive with a code/ folder too); else
    ``(None, [])``: torch.load cannot read it."""
    executed = [r for r in records if r.executed]
    if any(_at_root(r.member, "constants.pkl") for r in executed):
        return "torchscript", []
    main = next((r for r in executed if _at_root(r.member, "data.pkl")), None)
    return ("torch-zip", [main]) if main is not None else (None, [])


def check(records: Iterable[PickleRecord]) -> WeightsOnlyCheck:
    """What torch's weights-only unpickler would refuse in ``records`` (the streams that
    :func:`loaded_streams` keeps)."""
    out = WeightsOnlyCheck()
    blocked: set[tuple[str, str]] = set()
    dtype_classes: set[str] = set()
    problems: dict[str, None] = {}
    for record in records:
        result = record.result
        for ref in result.globals:
            if ref.opcode == "GLOBAL" and ref.literal:
                module, name = torch_spelling(ref)
                if f"{module}.{name}" not in ALLOWED:
                    blocked.add((module, name))
        for op, at in sorted(result.rare_opcodes.items(), key=lambda kv: kv[1]):
            if op not in WEIGHTS_ONLY_OPCODES:
                where = f" in {record.member}" if record.member else ""
                problems.setdefault(
                    f"it uses the pickle opcode {OPCODE_NAMES.get(op, hex(op))} (byte {at:,}"
                    f"{where}), which torch's weights-only unpickler does not read (saved with "
                    "pickle_protocol > 2?)", None)
                break  # one is enough to say why
        # 100,000s of tensors' calls: only the few that fill an object or make a numpy dtype
        dtypes = {id(g) for g in result.globals if g.literal and g.full_name in NUMPY_DTYPE_NAMES}
        picked = [c for c in result.calls if c.dict_items or c.list_items] if not dtypes else \
            [c for c in result.calls if c.dict_items or c.list_items or id(c.func) in dtypes]
        for c in picked:
            _call_problems(c, problems, dtype_classes)
    for module, name in sorted(blocked, key=lambda mn: f"{mn[0]}.{mn[1]}"):
        full = f"{module}.{name}"
        if module in BLOCKED_MODULES:
            problems.setdefault(f"torch refuses {full} even when allowed (module {module} "
                                "is blocked)", None)
        if full in NEVER_ALLOW:
            problems.setdefault(f"{full} cannot be allowed safely: {NEVER_ALLOW[full]}", None)
        importer = next((m for m, names in ALLOWED_AFTER_IMPORT.items() if full in names), None)
        if importer:
            out.by_import.setdefault(importer, []).append(full)
    out.blocked = sorted(blocked, key=lambda mn: f"{mn[0]}.{mn[1]}")
    out.problems = list(problems)
    if any(f"{m}.{n}" in NUMPY_DTYPE_NAMES for m, n in blocked):
        out.also_allow = [("numpy.dtypes", c) for c in sorted(dtype_classes)]
    return out


def _call_problems(c: Call, problems: dict[str, None], dtype_classes: set[str]) -> None:
    name = c.func_name
    if c.dict_items and name not in DICT_TARGETS:
        problems.setdefault(
            f"it fills a {name or 'computed object'} with SETITEMS: torch's weights-only "
            "unpickler fills only a dict, OrderedDict or Counter, whatever is allowed", None)
    if c.list_items and (name is None or name in NOT_LISTS):
        problems.setdefault(
            f"it fills a {name or 'computed object'} with APPENDS: torch's weights-only "
            "unpickler appends only to lists", None)
    if name in NUMPY_DTYPE_NAMES and c.args and isinstance(c.args[0], str):
        cls = numpy_dtype_class(c.args[0])
        if cls:
            dtype_classes.add(cls)


def numpy_dtype_class(code: str) -> str | None:
    """The ``numpy.dtypes`` class of a pickled dtype code ('f8' -> 'Float64DType'): the
    type of what ``numpy.dtype(code)`` makes, whose state ``BUILD`` then sets."""
    return _DTYPE_CLASSES.get(code) or _KIND_DTYPES.get(code[:1])
