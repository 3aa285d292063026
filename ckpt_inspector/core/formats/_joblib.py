"""A joblib pickle (``joblib.dump``: scikit-learn models, arrays), read as ``joblib.load``
reads it.

joblib writes each numpy array as a ``NumpyArrayWrapper`` (its shape, dtype and order,
built with ``BUILD``) followed by the array's bytes, raw, in the middle of the pickle
stream; its unpickler (Python's own ``pickle._Unpickler`` with its own ``BUILD``)
reads those bytes after each wrapper is built and puts the array where the wrapper was.
An array of Python objects is not raw bytes but a second pickle, which joblib runs with
``pickle.load`` right there. Read as a plain pickle (``pickle.load``, ``torch.load``),
the stream breaks at the first array's bytes; read here the way joblib reads it, the
arrays become tensors read from the file, an object array's pickle is scanned as run,
and the stream goes on where joblib goes on.

How many bytes joblib takes is worked out from the wrapper's state as numpy would
(``numpy.dtype``'s pickled code and state, the int64 product of the shape, the padding
byte of aligned arrays); anything this reader cannot work out exactly stops the read
there, with a finding (never safe). A stream that ``pickle.load`` reads differently
past the first array (it imports or calls something there) is a polyglot: dangerous.
"""

from __future__ import annotations

import contextvars
import os
import re
from collections.abc import Callable
from typing import Any

from ckpt_inspector.core.errors import CheckpointError, PickleError
from ckpt_inspector.core.findings import DANGEROUS, NEEDS_TRUST, Finding
from ckpt_inspector.core.formats._common import build_tree, run_pickle
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.pickle.values import (
    Builds,
    Call,
    GlobalRef,
    LazyBytes,
    PickleResult,
    short_repr,
)
from ckpt_inspector.core.tree import Checkpoint, Node, PickleRecord

WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
# joblib < 0.10 kept arrays in files next to the pickle, read with numpy.load
COMPANIONS = ("joblib.numpy_pickle_compat.NDArrayWrapper",
              "joblib.numpy_pickle_compat.ZNDArrayWrapper")
KNOWN = frozenset({WRAPPER, *COMPANIONS})  # built and read by joblib itself: records there
MAX_OBJECT_ARRAYS = 10_000
MAX_COMPANIONS = 16  # array files beside an old joblib pickle read for the verdict
# what joblib.dump's wrappers hold (NumpyArrayWrapper.__init__'s fields)
FIELDS = frozenset({"subclass", "shape", "order", "dtype", "allow_mmap",
                    "numpy_array_alignment_bytes"})
_INT64 = 1 << 63
_FOLLOWING = contextvars.ContextVar("joblib_companion", default=False)
# ``path -> Checkpoint``: reads a companion file through the readers, which build on this
# module, so the registry (formats/__init__) sets it rather than this module importing it
file_reader: Callable[[str], Checkpoint] | None = None
_CODE = re.compile(r"([biufcmMOSUV])(\d*)")
_DTYPES = ("numpy.dtype", "numpy.core.multiarray.dtype", "numpy._core.multiarray.dtype")
# what an array read from the bytes after its wrapper is shown as (pickle.rebuilders)
_AS_ARRAY = GlobalRef("joblib.numpy_pickle", "NumpyArrayWrapper.read", 0, "joblib")


# a joblib < 0.9.3 "Z-file" is read by joblib's compat unpickler, for which only the
# companion wrappers are arrays (set while one is read: formats.archive)
ZFILE = contextvars.ContextVar("joblib_zfile", default=False)
_RECONSTRUCTORS = ("copyreg._reconstructor", "copyreg.__newobj__", "copy_reg._reconstructor",
                   "copy_reg.__newobj__")


def _wrappers() -> tuple[str, ...]:
    return COMPANIONS if ZFILE.get() else (WRAPPER, *COMPANIONS)


def applies(result: PickleResult) -> bool:
    """Whether a stream names joblib's array wrappers (so joblib.load reads arrays in it)."""
    names = _wrappers()
    return any(g.literal and g.full_name in names for g in result.globals)


def _is_wrapper(obj: Any, names: tuple[str, ...]) -> bool:
    """Whether a built object is an instance of one of ``names`` as joblib.dump writes one:
    the class called with no arguments (NEWOBJ), or copyreg's reconstructors handed the
    class. Any other call given the class, or the class given arguments, may or may not
    make one (joblib's ``isinstance`` decides, and ``__init__`` sets what the BUILD state
    does not): no joblib.dump writes it, and it is refused (:class:`_Crafted`)."""
    if not isinstance(obj, Call):
        return False
    func = obj.func_name
    args = obj.args if isinstance(obj.args, tuple) else ()
    if func in names:
        if args or obj.kwargs:
            raise _Crafted(f"{func} called with arguments")
        return True
    named = [a for a in args if isinstance(a, GlobalRef) and a.full_name in names]
    if not named:
        return False
    if func in _RECONSTRUCTORS and args[0] is named[0] and (
            len(args) == 1 or (func.endswith("_reconstructor") and len(args) == 3
                               and isinstance(args[1], GlobalRef)
                               and args[1].full_name == "builtins.object"
                               and args[2] is None)) and not obj.kwargs:
        return True
    raise _Crafted(f"{func or 'a computed call'} handed {named[0].full_name}")


def _attributes(state: Any) -> dict[str, Any] | None:
    """The instance dict that Python's BUILD leaves (each BUILD updates it, a 2-tuple is
    (dict, slots)), or None when a state is not plain dicts."""
    attrs: dict[str, Any] = {}
    for one in (state if isinstance(state, Builds) else [state]):
        parts = one if isinstance(one, tuple) and len(one) == 2 else (one,)
        for part in parts:
            if part is None or (type(part) is dict and not part):
                continue
            if type(part) is not dict:
                return None
            if any(type(k) is not str for k in part):
                # a key computed at load time (str("shape"), numpy.str_) is the same key to
                # Python: which value wins cannot be told here, and no joblib.dump writes one
                raise _Crafted("an array wrapper whose state has a key computed at load time")
            attrs.update(part)
    return attrs


def dtype_bytes(value: Any) -> tuple[int, bool] | str:
    """(item size, holds objects) of a pickled ``numpy.dtype``, as numpy 2 makes it (the
    item size and object flag of flexible kinds come from the state, others' from the
    code), or why it cannot be told."""
    if not (isinstance(value, Call) and value.func_name in _DTYPES and value.args
            and type(value.args[0]) is str and not isinstance(value.state, Builds)):
        return "its dtype is not a plain numpy dtype"
    if value.args[1:] != (False, True):
        # numpy.dtype(code, align, copy) as numpy pickles it; with copy=False the state
        # would apply to numpy's shared dtype, which is read otherwise
        raise _Crafted(f"a dtype made as numpy.dtype{short_repr(value.args)}, not as numpy "
                       "pickles one")
    match = _CODE.fullmatch(value.args[0])
    if match is None:
        return f"dtype code {value.args[0]!r}"
    kind, digits = match[1], int(match[2] or 0)
    state = value.state
    flexible = kind in "SUV"
    if state is None:
        size, flags = (digits * 4 if kind == "U" else digits), 0
    elif isinstance(state, tuple) and len(state) >= 8 and state[0] in (3, 4):
        if state[2] is not None or state[3] is not None or state[4] is not None:
            return "a structured or sub-array dtype"
        elsize, flags = state[5], state[7]
        if type(elsize) is not int or type(flags) is not int:
            return "a dtype state that is not numbers"
        size = elsize if flexible else digits
    else:
        return "a dtype state numpy does not write"
    if size <= 0:
        return f"a dtype of item size {size}"
    # an unpickled dtype holds objects as its pickled flags say (NPY_ITEM_HASOBJECT), not as
    # its code does: one where they disagree is read as raw bytes by one numpy and as a
    # pickle by another, or the other way round, and no numpy writes one
    if state is not None and bool(flags & 1) != (kind == "O"):
        raise _Crafted(f"a {value.args[0]} dtype whose flags say it "
                       f"{'holds' if flags & 1 else 'does not hold'} Python objects")
    return size, kind == "O"


class _Crafted(Exception):
    """A wrapper no joblib.dump writes, which loaders read in different ways."""


class ArrayReads:
    """joblib's BUILD, for the interpreter: after a wrapper is built, the bytes its array
    takes are skipped (left in the file, as the array's data) or, for an object array,
    read as the pickle joblib runs there."""

    def __init__(self, ckpt: Checkpoint, data: Any, label: str):
        self.ckpt, self.data, self.label = ckpt, data, label
        self.first: int | None = None  # where the first array's bytes start
        self.objects: list[tuple[int, int]] = []  # object arrays' pickles, read as run
        # what those pickles name, by offset: (offset, a global's or a call's name)
        self.named: set[tuple[int | None, Any]] = set()
        self.companions: set[str] = set()  # old joblib's array files, read for the verdict
        self._dicts: dict[int, dict[str, Any]] = {}  # each wrapper's instance dict so far
        self._alive: list[Any] = []  # (the wrappers whose ids key it)

    def __call__(self, obj: Any, pos: int, frame_end: int) -> tuple[int, Any] | None:
        try:
            if _is_wrapper(obj, COMPANIONS):
                self._companion(obj, pos)
                return None
            if ZFILE.get() or not _is_wrapper(obj, (WRAPPER,)):
                return None
        except _Crafted as crafted:
            return self._stop(DANGEROUS, str(crafted), pos)
        if self.first is None:
            self.first = pos
        if frame_end >= 0 and pos < frame_end:
            return self._stop(DANGEROUS, "joblib reads this array's bytes from the end of "
                              "the frame it sits in, not where it is: bytes read out of "
                              "order, which no joblib.dump writes", pos)
        try:
            attrs = self._snapshot(obj)
            if attrs is None:
                return self._stop(NEEDS_TRUST, "an array wrapper whose state is not plain "
                                  "data", pos)
            odd = sorted(set(attrs) - FIELDS)
            if odd:  # an instance attribute hides what joblib calls (read_array, ...)
                raise _Crafted(f"an array wrapper whose state sets {odd[0]!r}, which no "
                               "joblib.dump writes")
            spec = dtype_bytes(attrs.get("dtype"))
        except _Crafted as crafted:
            return self._stop(DANGEROUS, str(crafted), pos)
        if isinstance(spec, str):
            return self._stop(NEEDS_TRUST, f"an array of {spec}", pos)
        itemsize, objects = spec
        if objects:
            return self._object_array(pos)
        count = self._count(attrs.get("shape"), pos)
        start = pos
        if attrs.get("numpy_array_alignment_bytes") is not None:
            if pos >= len(self.data):
                raise PickleError("the array's padding runs past the end of the data", pos)
            start = pos + 1 + self.data[pos]
        end = start + count * itemsize
        if end > len(self.data):
            raise PickleError("the array's bytes run past the end of the data: joblib.load "
                              "fails here", pos)
        order = "F" if attrs.get("order") == "F" else "C"
        array = Call(_AS_ARRAY, (LazyBytes(self.data, start, end - start, "bytes"),
                                 attrs.get("dtype"), attrs.get("shape"), order), "joblib", pos)
        return end, array

    def _snapshot(self, obj: Call) -> dict[str, Any] | None:
        """The wrapper's instance dict as Python's BUILD leaves it now: each BUILD copies
        its state's items in when it runs, so a state dict changed after (SETITEM on its
        memo) does not count; the latest state is taken at each BUILD and merged."""
        state = obj.state
        latest = state[-1] if isinstance(state, Builds) else state
        merged = self._dicts.get(id(obj))
        if merged is None:
            merged = self._dicts[id(obj)] = {}
            self._alive.append(obj)
        news = _attributes(latest)
        if news is None:
            return None
        merged.update(news)  # a copy of the items as they are at this BUILD
        return dict(merged)

    def _count(self, shape: Any, pos: int) -> int:
        """numpy.multiply.reduce of the shape as int64 (joblib's count), or the stop."""
        if type(shape) is not tuple or any(type(n) is not int for n in shape):
            self._stop(NEEDS_TRUST, "an array whose shape is not a tuple of ints", pos)
        count = 1
        for n in shape:
            if not -_INT64 <= n < _INT64:
                raise PickleError("an array dimension past int64: joblib.load fails here", pos)
            count = (count * n + _INT64) % (2 * _INT64) - _INT64  # wraps as int64 does
        if count < 0:
            raise PickleError("an array of negative size: joblib.load fails here", pos)
        return count

    def _object_array(self, pos: int) -> tuple[int, Any]:
        if len(self.objects) >= MAX_OBJECT_ARRAYS:
            self._stop(NEEDS_TRUST, f"more than {MAX_OBJECT_ARRAYS:,} object arrays", pos)
        member = f"{self.label}object array at byte {pos}"
        try:
            inner = run_pickle(self.ckpt, self.data, member, pos, expect_end=False)
        except CheckpointError:
            raise PickleError("the object array's pickle is broken: joblib.load fails here",
                              pos) from None
        self.objects.append((pos, inner.end))
        self.named.update((g.offset, g.full_name) for g in inner.globals)
        self.named.update((c.offset, c.func_name) for c in inner.calls)
        return inner.end, inner.value

    def _companion(self, obj: Any, pos: int) -> None:
        try:
            attrs = _attributes(obj.state) or {}
        except _Crafted:
            attrs = {}
        name = attrs.get("filename")
        shown = name if isinstance(name, str) else "a file it names"
        escapes = not isinstance(name, str) or name.startswith(("/", "\\")) or \
            ".." in re.split(r"[\\/]", name) or (len(name) > 1 and name[1] == ":")
        where = self.label.rstrip("/") or None
        scanned = not escapes and isinstance(name, str) and self._scan_companion(name)
        self.ckpt.findings.append(Finding(
            DANGEROUS if escapes else NEEDS_TRUST, "companion-file",
            f"joblib.load reads the array's file {shown!r} (joblib before 0.10 wrote "
            "arrays beside the pickle; an NDArrayWrapper's with numpy.load(allow_pickle="
            "True), which runs any pickle that file holds)"
            + (": a path outside this file's folder, not scanned" if escapes else
               ": it is scanned with this file" if scanned else
               ": it was not scanned: scan it too"),
            where, offset=pos))

    def _scan_companion(self, name: str) -> bool:
        """Read a companion file beside a local file (one level: a companion's own
        companions are only named) for the verdict; whether it was read."""
        open_checkpoint = file_reader
        assert open_checkpoint is not None, "formats/__init__ registers the file reader"
        folder = os.path.dirname(self.ckpt.path)
        full = os.path.realpath(os.path.join(folder, name))
        if full in self.companions:  # one file however it is spelt ("./x", "././x")
            return True
        if self.label or _FOLLOWING.get() or not os.path.isfile(self.ckpt.path) or \
                not os.path.isfile(full) or len(self.companions) >= MAX_COMPANIONS:
            return False
        self.companions.add(full)
        token = _FOLLOWING.set(True)
        try:
            part = open_checkpoint(full)
        except CheckpointError as err:
            part = err.partial
            self.ckpt.findings.append(Finding(
                NEEDS_TRUST, "unreadable-file", f"{name} cannot be read: {err}", file=name))
        finally:
            _FOLLOWING.reset(token)
        if part is not None:
            self.ckpt.take_scan(part, lambda _f: name, lambda w: f"{name}: {w}")
        return True

    def _stop(self, severity: str, why: str, pos: int) -> Any:
        self.ckpt.findings.append(Finding(
            severity, "joblib-unread",
            f"{why}: joblib.load goes on from an offset this reader cannot work out, so the "
            "rest of the stream was not scanned", self.label.rstrip("/") or None, offset=pos))
        raise PickleError(f"joblib array not followed: {why}", pos, limit=True)


def read_stream(ckpt: Checkpoint, src: Source, label: str, plain: PickleRecord,
                legacy: bool) -> Node:
    """The stream as joblib.load reads it, after ``plain`` (pickle.load's reading, which
    broke or ended at the first array's bytes) was recorded: kept for the scan only when
    it does something past where joblib's reading takes those bytes as data."""
    buffer = src.buffer()
    reads = ArrayReads(ckpt, buffer, label)
    count = len(ckpt.pickles)
    error: CheckpointError | None = None
    result = None
    try:
        result = run_pickle(ckpt, buffer, label, expect_end=False, end_hint=len(buffer),
                            after_build=reads)
    except CheckpointError as err:
        error = err
    for record in ckpt.pickles[count:]:
        if record.member == label:
            record.known_classes = KNOWN
    _reconcile(ckpt, plain, reads, legacy, label)
    if error is not None:
        raise error
    assert result is not None
    ckpt.pickles[-1].trailing = len(buffer) - result.end
    if not label:
        ckpt.metadata["pickle protocol"] = result.protocol
        ckpt.metadata["written by"] = "joblib.dump"
    return build_tree(ckpt, result.value)


def _not_str(value: Any) -> bool:
    """Whether a stack value is certainly not a str when the stream runs: a literal of
    another type, an imported object, or one of joblib's wrappers (a call may return
    anything)."""
    if isinstance(value, str):
        return False
    if isinstance(value, Call):
        return value.func_name in (WRAPPER, *COMPANIONS) and value.kind == "newobj"
    return True


def _reconcile(ckpt: Checkpoint, plain: PickleRecord, reads: ArrayReads, legacy: bool,
               label: str) -> None:
    """Drop pickle.load's reading when it is joblib's up to the first array's bytes (it
    breaks there, or runs on into an object array's pickle, which joblib runs too); keep
    it, and call the file a polyglot, when it imports or calls something anywhere else
    past that point, or reads on as a legacy torch file."""
    result = plain.result
    first = reads.first
    # pickle.load raises at a STACK_GLOBAL whose module or name is not a str (a wrapper
    # from the outer memo where the object array's pickle has a name of its own): nothing
    # it reads past that runs
    fails = [g.offset or 0 for g in result.globals if not g.literal and (
        _not_str(g.module) or _not_str(g.name)) and (g.offset or 0) >= (first or 0)]
    stop = min(fails, default=None)

    def elsewhere(at: int, name: Any) -> bool:
        return first is not None and at >= first and (stop is None or at < stop) and not (
            # joblib's own reading of an object array's pickle named the same there
            # (pickle.load reads it with the outer memo, and may get other objects)
            any(a <= at < b for a, b in reads.objects) and (at, name) in reads.named)

    past = any(elsewhere(g.offset or 0, g.full_name) for g in result.globals) or any(
        elsewhere(c.offset or 0, c.func_name) for c in result.calls)
    if not past and not legacy:
        ckpt.pickles.remove(plain)
        return
    plain.member = f"{label}as pickle.load reads it"
    for g in result.globals:
        g.member = plain.member
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot",
        "pickle.load (and torch.load) read this joblib file differently from joblib.load: "
        + ("past the first array's bytes, which they take for opcodes, they import or call "
           "something" if past else "they take it for a legacy torch checkpoint"),
        label.rstrip("/") or None))
