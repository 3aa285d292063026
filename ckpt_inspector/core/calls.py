"""What a pickle would *do* when loaded: which names it calls, builds, or only mentions.

The verdict is decided from uses, not from a list of bad names:

- a name on torch's ``weights_only`` allowlist, used as torch uses it, is ``safe``;
- building an instance of a class (``NEWOBJ``, ``copyreg._reconstructor``, a class
  called in ``REDUCE``/``OBJ``/``INST``) is ``needs-trust``, naming the class; a class
  whose constructor acts on the world (opens files, runs commands, downloads) built with
  arguments is ``dangerous``;
- calling anything that is not a class and not on the allowlist is ``dangerous``, naming
  the call and its arguments -- also when the call is made by an allowlisted function
  (``_rebuild_from_type_v2`` calls its first argument), when a call's result is called,
  and when ``BUILD`` plants a method (``__setstate__``) that a later ``BUILD`` calls;
- a name from a package this project does not know is ``needs-trust`` when it is only
  built, ``dangerous`` when what it returns is called or an allowlisted function calls it.

Whether a name is a class or a function comes from :mod:`callables` (a table made from
the installed libraries by the developers); nothing the file names is imported here.
The denylists in :mod:`scan` stay as a second opinion.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import callables
from ckpt_inspector.core.allowlist import WEIGHTS_ONLY_GLOBALS
from ckpt_inspector.core.pickle.arguments import literal_bytes
from ckpt_inspector.core.pickle.values import Builds, Call, GlobalRef, PickleResult, short_repr

# Library functions that rebuild an object from its parts when unpickled (their
# arguments are checked like any other use): calling them is a reconstruction.
RECONSTRUCTORS = frozenset({
    "copyreg._reconstructor", "copy_reg._reconstructor", "copyreg.__newobj__",
    "copyreg.__newobj_ex__",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__bit_generator_ctor",
    "torch._tensor._rebuild_from_type", "torch.storage._load_from_bytes",
    "torch._utils._rebuild_xla_tensor", "torch._utils._rebuild_mps_tensor",
    "torch._utils._rebuild_sparse_csr_tensor", "torch._utils._rebuild_typed_storage",
    "torch._utils._rebuild_typed_storage_child",
    "torch.nn.modules.module._forward_unimplemented",
    "logging.getLogger", "re._compile", "zoneinfo.ZoneInfo._unpickle",
    "array._array_reconstructor", "torch.nested._internal.nested_tensor._rebuild_njt",
    "numpy.ma.core._mareconstruct",
})
# Plain data classes of libraries whose files hold them (torch.distributed.checkpoint's
# ``.metadata``): built from literal fields, their code does nothing but store them, so
# building them does not by itself make a file need trust. Any other use of them (called by
# another function, kept to be called, used as a class by a consumer) is judged as usual.
_DCP = "torch.distributed.checkpoint.metadata."
# the classes torch.distributed.checkpoint's own .metadata is made of: plain records that
# DCP unpickles itself; known only in that stream (PickleRecord.known_classes), since
# torch.load(weights_only=True) refuses them anywhere else
DCP_METADATA_CLASSES = frozenset({
    _DCP + "Metadata", _DCP + "TensorStorageMetadata", _DCP + "BytesStorageMetadata",
    _DCP + "ChunkStorageMetadata", _DCP + "TensorProperties", _DCP + "_MEM_FORMAT_ENCODING",
    _DCP + "MetadataIndex", _DCP + "StorageMeta",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath",  # StorageMeta.checkpoint_id
})
# TorchScript's own unpickler (C++) builds these itself; nothing by these names is imported
RECONSTRUCTOR_PREFIXES = ("torch.jit._pickle.",)
# Cython's generated unpickling helpers in numpy (SeedSequence, bit generators)
CYTHON_UNPICKLE = "__pyx_unpickle_"

# functions that call (or build from) one of their arguments while loading:
# name -> (positions called, positions used as a class)
CONSUMERS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "torch._tensor._rebuild_from_type_v2": ((0,), (1,)),
    "torch._tensor._rebuild_from_type": ((0,), (1,)),
    "torch._utils._rebuild_wrapper_subclass": ((), (0,)),
    "copyreg._reconstructor": ((), (0, 1)),
    "copy_reg._reconstructor": ((), (0, 1)),
    "copyreg.__newobj__": ((), (0,)),
    "copyreg.__newobj_ex__": ((), (0,)),
    "builtins.map": ((0,), ()),
    "builtins.filter": ((0,), ()),
    "builtins.iter": ((0,), ()),
    "itertools.starmap": ((0,), ()),
    "itertools.filterfalse": ((0,), ()),
    "itertools.takewhile": ((0,), ()),
    "itertools.dropwhile": ((0,), ()),
    "itertools.accumulate": ((1,), ()),
    "functools.reduce": ((0,), ()),
    "_functools.reduce": ((0,), ()),
    "itertools.groupby": ((1,), ()),
    "weakref.finalize": ((1,), ()),
    "weakref.ref": ((1,), ()),
    "_weakref.ref": ((1,), ()),
    "weakref.WeakMethod": ((1,), ()),
    "numpy.random._pickle.__generator_ctor": ((1,), ()),
    "numpy.random._pickle.__randomstate_ctor": ((1,), ()),
}
# methods the unpickler looks up on the object itself for APPEND(S) and ADDITEMS: an
# instance attribute of that name, planted by BUILD, is called with the file's items
ITEM_METHODS = frozenset({"append", "extend", "add"})
# rebuild functions that set a state argument on what they build (torch's _set_obj_state)
STATE_ARGS = {"torch._utils._rebuild_parameter_with_state": 3,
              "torch._tensor._rebuild_from_type_v2": 3, "torch._tensor._rebuild_from_type": 3}
# callables kept by an object to be called later (a partial, a defaultdict's factory)
KEEPERS = frozenset({"functools.partial", "_functools.partial", "functools.partialmethod",
                     "collections.defaultdict", "functools.cached_property",
                     "builtins.property", "builtins.staticmethod", "builtins.classmethod"})
# attributes that decide what later opcodes or calls run
BEHAVIOUR_DUNDERS = frozenset({
    "__setstate__", "__class__", "__reduce__", "__reduce_ex__", "__getattr__",
    "__getattribute__", "__setattr__", "__init__", "__new__", "__call__", "__del__",
    "__getstate__", "__dict__", "__getitem__", "__setitem__", "__iter__", "__eq__",
    "__hash__", "__init_subclass__", "__set_name__", "__get__", "__set__", "__missing__",
})


@dataclass
class Use:
    """How a stream uses one imported name (the GlobalRef objects sharing a name)."""

    ref: GlobalRef
    kind: str  # a callables kind
    canonical: str
    called: list[Call] = field(default_factory=list)  # REDUCE/OBJ/INST of it
    built: list[Call] = field(default_factory=list)  # NEWOBJ(_EX) of it
    called_by: list[str] = field(default_factory=list)  # allowlisted callers that call it
    class_for: list[str] = field(default_factory=list)  # callers that use it as a class
    kept_by: list[str] = field(default_factory=list)  # partial/defaultdict that keep it
    given_state: bool = False  # BUILD gives its instances a state (their __setstate__ runs)


@dataclass
class Verdict:
    severity: str  # dangerous | needs-trust | info
    code: str
    message: str
    offset: int | None = None
    name: str | None = None


def _allowed_kind(name: str) -> str:
    """Class or function for a name on torch's allowlist (its classes are capitalized,
    bar a few builtins; its functions are ``_rebuild_*`` and ``_codecs.encode``)."""
    if name[:1].isupper() or name in ("set", "bytearray", "complex"):
        return callables.CLASS
    return callables.FUNCTION if name.startswith("_") or name == "encode" else callables.CLASS


def _is_class(kind: str) -> bool:
    return kind in callables.CLASS_KINDS


def _values(obj: Any) -> Iterator[Any]:
    """The direct parts of an inert value (for finding GlobalRefs passed as data)."""
    if isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif isinstance(obj, dict):
        yield from obj.keys()
        yield from obj.values()


def _states(state: Any) -> Iterator[dict[Any, Any] | Call]:
    """The dicts whose items a BUILD state sets as attributes (``(dict, slots)`` pairs,
    several BUILDs). C's load_build takes any dict, subclasses too: an OrderedDict, a
    Counter or any call whose result may be a dict counts, with the items SETITEM(S) gave
    it and those its arguments give it (``OrderedDict(pairs)``)."""
    if isinstance(state, Builds):
        for s in state:
            yield from _states(s)
    elif isinstance(state, (dict, Call)):
        yield state
    elif isinstance(state, tuple) and len(state) == 2:
        for part in state:
            if isinstance(part, (dict, Call)):
                yield part


def _sets_behaviour(key: Any, value: Any) -> bool:
    """Whether setting attribute ``key`` to ``value`` can change what an object does: a
    method APPEND(S)/ADDITEMS call, or a dunder (a name of Python's protocols, or any
    dunder set to something imported or computed)."""
    if not isinstance(key, str):
        return False
    if key in ITEM_METHODS:
        return isinstance(value, (GlobalRef, Call))
    return key.startswith("__") and key.endswith("__") and (
        key in BEHAVIOUR_DUNDERS or isinstance(value, (GlobalRef, Call)))


def _pairs(items: Any) -> Iterator[tuple[Any, Any]]:
    """The ``(key, value)`` pairs a dict's constructor takes from a list or tuple: pairs
    as tuples or as lists."""
    return (tuple(p) for p in items if isinstance(p, (tuple, list)) and len(p) == 2)


class Analysis:
    """One pass over a stream's calls: every use of every imported name, and tricks."""

    def __init__(self, result: PickleResult):
        self.uses: dict[str, Use] = {}
        self.by_id: dict[int, Use] = {}
        self.verdicts: list[Verdict] = []
        self._state_items: dict[tuple[int, int], list[tuple[Any, Any]]] = {}
        self._alive: list[Any] = []
        for g in result.globals:
            if not g.literal:
                continue
            name = g.full_name
            use = self.uses.get(name)
            if use is None:
                if name in WEIGHTS_ONLY_GLOBALS:  # no table needed (it takes ~0.1 s to load)
                    kind, canon = _allowed_kind(str(g.name)), name
                else:
                    kind, canon = callables.resolve(str(g.module), str(g.name))
                use = self.uses[name] = Use(g, kind, canon)
            self.by_id[id(g)] = use
        self.invoked: set[int] = set()  # ids of objects some call invokes
        for c in result.calls:
            self._call(c)
        for c in result.calls:
            self._state(c)

    # -- one call ------------------------------------------------------------------------
    def _call(self, c: Call) -> None:
        func = c.func
        use = self.by_id.get(id(func))
        if c.kind in ("reduce", "obj", "inst"):
            self.invoked.add(id(func))
            if use is not None:
                use.called.append(c)
        elif use is not None:
            use.built.append(c)
        if isinstance(func, Call) and attribute_name(func) not in RECONSTRUCTORS:
            inner = func.func_name or "<computed>"
            self.verdicts.append(Verdict(
                "dangerous", "calls-result",
                f"calls what {inner}(…) returns, with {_short(c.args)}: loading runs a callable "
                "the file assembled", c.offset, func.func_name))
        if use is not None:
            self._named_call(c, use)

    def _named_call(self, c: Call, use: Use) -> None:
        """What calling an imported name does with its arguments."""
        name = use.ref.full_name
        if name == "torch.storage._load_from_bytes" and c.args and \
                literal_bytes(c.args[0]) is None:
            self.verdicts.append(Verdict(
                "dangerous", "computed-checkpoint",
                f"torch.load()s a checkpoint from bytes computed at load time "
                f"({_short(c.args[0])}): what it runs cannot be read", c.offset, name))
        positions = CONSUMERS.get(name) or CONSUMERS.get(use.canonical)
        if positions:
            called_at, class_at = positions
            for i in called_at:
                if i < len(c.args):
                    self._passed(c.args[i], name, "call")
            for i in class_at:
                if i < len(c.args):
                    self._passed(c.args[i], name, "class")
        if name in ("copyreg._reconstructor", "copy_reg._reconstructor") and \
                len(c.args) >= 3 and c.args[2] is not None:
            # base.__new__(cls, state) and base.__init__(obj, state): built with arguments
            self._built(c.args[1], (c.args[2],), c)
        elif name in ("copyreg.__newobj__", "copyreg.__newobj_ex__") and len(c.args) > 1:
            self._built(c.args[0], tuple(c.args[1:]), c)
        self._kept(c, use)

    def _kept(self, c: Call, use: Use) -> None:
        """A callable a keeper (functools.partial...) holds to call later."""
        name = use.ref.full_name
        if name in KEEPERS or use.canonical in KEEPERS:
            kept = [c.args[0]] if c.args else []
            for s in _states_raw(c.state):
                if isinstance(s, tuple) and s:
                    kept.append(s[0])  # functools.partial's state: (func, args, kw, dict)
            for v in kept:
                self._passed(v, name, "keep")

    def _built(self, cls: Any, args: tuple[Any, ...], by: Call) -> None:
        use = self.by_id.get(id(cls))
        if use is not None:
            use.built.append(Call(cls, args, "reconstruct", by.offset))

    def _passed(self, value: Any, caller: str, how: str) -> None:
        if isinstance(value, Call):
            if how == "call":
                self.invoked.add(id(value))
                self.verdicts.append(Verdict(
                    "dangerous", "calls-result",
                    f"{caller} calls what {value.func_name or '<computed>'}(…) returns while "
                    "loading: a callable the file assembled", value.offset, value.func_name))
            return
        use = self.by_id.get(id(value))
        if use is None:
            return
        if how == "call":
            self.invoked.add(id(value))
            use.called_by.append(caller)
        elif how == "class":
            use.class_for.append(caller)
        else:
            use.kept_by.append(caller)

    # -- BUILD -----------------------------------------------------------------------------
    def _state(self, c: Call) -> None:
        if c.state is not None:
            target = c.func
            if c.func_name in ("copyreg._reconstructor", "copy_reg._reconstructor",
                               "copyreg.__newobj__", "copyreg.__newobj_ex__") and c.args:
                target = c.args[0]
            use = self.by_id.get(id(target))
            if use is not None:
                use.given_state = True
        states = [c.state] if c.state is not None else []
        at = STATE_ARGS.get(c.func_name or "")
        if at is not None and at < len(c.args):
            states.append(c.args[at])  # set on the rebuilt tensor attribute by attribute
        for state in (d for s in states for d in _states(s)):
            for key, value in self._behaviour_items(state):
                how = ("APPEND(S)/ADDITEMS call it with the file's items" if key in
                       ITEM_METHODS else "a later BUILD or call runs it")
                self.verdicts.append(Verdict(
                    "dangerous", "build-sets-method",
                    f"BUILD sets {key} on a {c.func_name or 'computed'} object to "
                    f"{_short(value)}: {how}", c.offset,
                    value.full_name if isinstance(value, GlobalRef) and value.literal
                    else None))

    def _behaviour_items(self, state: Any, depth: int = 0) -> list[tuple[Any, Any]]:
        """The items of a BUILD state (a dict, or a call whose result may be one: its
        SETITEM(S) items, its arguments' and keywords' items, ``OrderedDict(pairs)``) that
        set behaviour (:func:`_sets_behaviour`). Found once for each object: a file may
        give one state, or one list of 200,000 pairs, to 20,000 BUILDs (reading them at
        each was 4e9 steps, where pickle.load takes 0.1 s)."""
        key = (id(state), depth if isinstance(state, Call) else 0)  # how deep it looked
        found = self._state_items.get(key)
        if found is not None:
            return found
        if isinstance(state, dict):
            items: Any = state.items()
        elif isinstance(state, (list, tuple)):
            items = _pairs(state)
        elif isinstance(state, Call):
            items = list(state.dict_items or ())
            for arg in state.args if isinstance(state.args, tuple) else ():
                if isinstance(arg, (dict, list, tuple)) or (
                        isinstance(arg, Call) and depth < 3):  # OrderedDict(OrderedDict(..))
                    items.extend(self._behaviour_items(arg, depth + 1))
            if isinstance(state.kwargs, dict):
                items.extend(state.kwargs.items())
        else:
            items = ()
        found = [(k, v) for k, v in items if _sets_behaviour(k, v)]
        self._state_items[key] = found
        self._alive.append(state)  # ids are the keys: keep each object alive
        return found


def attribute_name(c: Call) -> str | None:
    """``module.Class.attr`` for ``getattr(module.Class, 'attr')`` (protocol 2 writes a
    classmethod such as ``ZoneInfo._unpickle`` that way), else None."""
    if c.func_name == "builtins.getattr" and len(c.args) == 2 and isinstance(
            c.args[0], GlobalRef) and c.args[0].literal and isinstance(c.args[1], str):
        return f"{c.args[0].full_name}.{c.args[1]}"
    return None


def _states_raw(state: Any) -> Iterator[Any]:
    if isinstance(state, Builds):
        yield from state
    elif state is not None:
        yield state


def _short(value: Any) -> str:
    return short_repr(value)


def judge_use(use: Use, known: frozenset[str] = frozenset()) -> tuple[str, str] | None:
    """(severity, message) for one imported name from how the stream uses it; None when
    torch's weights-only loader allows it as used, or when it is a class the stream's own
    loader expects (``known``: e.g. DCP's metadata records) built and not kept to call."""
    name = use.ref.full_name
    allowed = name in WEIGHTS_ONLY_GLOBALS
    kind = use.kind
    args = use.called[0].args if use.called else None
    reconstructor = use.canonical in RECONSTRUCTORS or name in RECONSTRUCTORS or \
        name.startswith(RECONSTRUCTOR_PREFIXES) or (
            name.startswith("numpy.") and str(use.ref.name).startswith(CYTHON_UNPICKLE))
    if use.called_by and not allowed and not _is_class(kind) and not reconstructor:
        return "dangerous", (f"{use.called_by[0]} calls {name} while loading (a "
                             f"{_kind_word(kind)}, not on torch's weights-only allowlist)")
    if use.class_for and kind in (callables.FUNCTION, callables.MODULE):
        return "dangerous", (f"{use.class_for[0]} uses {name} as a class, but it is a "
                             f"{_kind_word(kind)}")
    if allowed or (name in known and not use.kept_by):
        return None
    if kind == callables.METACLASS and any(len(c.args) >= 2 for c in use.called):
        return "dangerous", (f"makes a class at load time with {name}"
                             f"{_short(use.called[0].args)}: its methods are the file's")
    if kind == callables.SETSTATE and use.given_state:
        return "dangerous", (f"builds {name} with a state: its __setstate__ loads or runs "
                             "what the state holds")
    with_args = [c for c in use.called + use.built if c.args or c.kwargs]
    if kind == callables.UNKNOWN and with_args and callables.is_known_package(name):
        return "dangerous", (f"calls {name} with {_short(with_args[0].args)}: the installed "
                             "package has no class of that name")
    if kind == callables.MODULE:
        return "dangerous", f"imports the module {use.canonical} itself as {name}"
    if use.called and kind == callables.FUNCTION and not reconstructor:
        return "dangerous", f"calls {name} with {_short(args)}: a function, not a class"
    if kind == callables.ACTING and any(c.args or c.kwargs for c in use.called + use.built):
        built = next(c for c in use.called + use.built if c.args or c.kwargs)
        return "dangerous", (f"builds {name} with {_short(built.args or built.kwargs)}: its "
                             "constructor opens files, sockets or processes, or fetches or "
                             "loads code")
    if use.kept_by and kind == callables.FUNCTION and not (_pure(use.canonical) and _pure(name)):
        return "dangerous", (f"{use.kept_by[0]} keeps {name} to call later: a function that "
                             "is not a tensor operation")
    if use.called or use.built:
        what = "class" if _is_class(kind) else (
            "library function that rebuilds objects" if reconstructor else "name")
        return "needs-trust", (f"builds objects with {name} (a {what} not in torch's "
                               "weights-only allowlist): loading runs its code")
    if use.kept_by:
        return "needs-trust", (f"{use.kept_by[0]} keeps {name} to call later (not called "
                               "while loading)")
    return "needs-trust", (f"imports {name}, which is not in torch's weights-only allowlist: "
                           "loading imports it")


# modules of tensor and math operations: a partial or defaultdict keeping one is a model's
# activation or a config's helper, not a way to act on the world
PURE_MODULES = frozenset({"torch", "torch.nn.functional", "torch._C._nn", "torch.functional",
                          "torch._C._VariableFunctions", "torch._VariableFunctionsClass",
                          "torch.special", "torch.fft", "torch.linalg", "math", "numpy", "cmath",
                          "builtins"})
# names in those modules that read or write files, print, or run code
IMPURE_ATTRS = frozenset({"from_file", "load", "save", "eval", "exec", "open", "compile",
                          "__import__", "getattr", "setattr", "delattr", "breakpoint", "input",
                          "print", "memmap", "fromfile", "tofile", "loadtxt", "savetxt", "savez",
                          "savez_compressed", "genfromtxt", "fromregex", "vars", "globals",
                          "locals", "exit", "quit", "help"})


# torch modules whose functions act on files, processes or code: not kept lightly
TORCH_ACTING = ("torch.utils.collect_env", "torch.hub", "torch.serialization",
                "torch.distributed", "torch._inductor", "torch.utils.cpp_extension", "torch.fx",
                "torch.jit", "torch.package", "torch._dynamo", "torch.export", "torch.utils.data",
                "torch.multiprocessing", "torch.profiler", "torch.utils.tensorboard",
                "torch._C._distributed", "torch.compiler", "torch.onnx", "torch._export")


def _pure(canonical: str) -> bool:
    module, _, attr = canonical.rpartition(".")
    if attr in IMPURE_ATTRS:
        return False
    if module in PURE_MODULES:
        return True
    # torch's own helpers (a GradScaler's per-optimizer state factory)
    return module.startswith("torch.") and not module.startswith(TORCH_ACTING)


def _kind_word(kind: str) -> str:
    return {callables.MODULE: "module", callables.FUNCTION: "function",
            callables.UNKNOWN: "name from a package ckpt-inspector does not know"}.get(
                kind, "class")
