"""Pickles that run a payload through a callable nobody put on a denylist.

Each builder returns a bare pickle (protocol 4 opcodes written by hand) whose loading
with ``pickle.loads`` or ``torch.load(weights_only=False)`` creates ``marker``; the
tests prove that in a child process, then check that the scan calls it dangerous.
``BENIGN`` builds what people really save and must never be called dangerous.
"""

from __future__ import annotations

import struct
from pathlib import Path

PROTO = b"\x80\x04"
MARK, TUPLE, REDUCE, BUILD, STOP, NEWOBJ = b"(", b"t", b"R", b"b", b".", b"\x81"
EMPTY_DICT, SETITEM, EMPTY_TUPLE, POP = b"}", b"s", b")", b"0"


def s(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def g(module: str, name: str) -> bytes:
    return s(module) + s(name) + b"\x93"


def t(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    return func + t(*args) + REDUCE


def d(**items: bytes) -> bytes:
    return EMPTY_DICT + b"".join(s(k) + v + SETITEM for k, v in items.items())


def i(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def pickle_of(body: bytes) -> bytes:
    return PROTO + body + STOP


def touch(marker: Path) -> str:
    return f"touch {marker}"


# -- each class of trick from the issue ------------------------------------------------------
def import_dotted_name(marker: Path) -> bytes:
    """torch's import-by-name helper fetches os.system; the stream calls the result."""
    fn = call(g("torch._utils", "_import_dotted_name"), s("os.system"))
    return pickle_of(call(fn, s(touch(marker))))


def logging_dictconfig(marker: Path) -> bytes:
    """dictConfig's '()' factory resolves a dotted name and calls it with the config."""
    handler = d(**{"()": s("subprocess.call"), "args": b"]" + MARK + s("touch") + s(str(marker))
                   + b"e"})
    config = d(version=i(1), handlers=d(h=handler))
    return pickle_of(call(g("logging.config", "dictConfig"), config))


def logging_resolve(marker: Path) -> bytes:
    """logging.config's resolver imports a dotted name: calling what it returns runs it."""
    fn = call(g("logging.config", "_resolve"), s("os.system"))
    return pickle_of(call(fn, s(touch(marker))))


def fx_exec(marker: Path) -> bytes:
    """torch.fx compiles and runs Python source it is given."""
    src = f"import os\nos.system({touch(marker)!r})\n"
    return pickle_of(call(g("torch.fx.graph_module", "_exec_with_source"), s(src), EMPTY_DICT))


def collect_env_run(marker: Path) -> bytes:
    """A subprocess wrapper inside torch (shell=True)."""
    return pickle_of(call(g("torch.utils.collect_env", "run"), s(touch(marker))))


def torch_save(marker: Path) -> bytes:
    """torch.save writes a file wherever the stream says."""
    return pickle_of(call(g("torch", "save"), i(1), s(str(marker))))


def pathlib_write(marker: Path) -> bytes:
    """A method reached by a dotted name: Path.write_text(Path(marker), 'x')."""
    path = call(g("pathlib", "Path"), s(str(marker)))
    return pickle_of(call(g("pathlib", "Path.write_text"), path, s("x")))


def numpy_memmap(marker: Path) -> bytes:
    """A class whose constructor creates the file it maps."""
    return pickle_of(call(g("numpy", "memmap"), s(str(marker)), s("uint8"), s("w+"), i(0),
                          t(i(4))))


def gzip_file(marker: Path) -> bytes:
    return pickle_of(call(g("gzip", "GzipFile"), s(str(marker)), s("wb")))


def logging_file_handler(marker: Path) -> bytes:
    return pickle_of(call(g("logging", "FileHandler"), s(str(marker))))


def operator_getitem(marker: Path) -> bytes:
    """_operator.getitem (the C module's name for operator.getitem) picks a function out
    of a module's namespace; the stream calls what it returns."""
    fn = call(g("_operator", "getitem"), g("torch.utils.collect_env", "__dict__"), s("run"))
    return pickle_of(call(fn, s(touch(marker))))


def getattribute_through_class(marker: Path) -> bytes:
    """object.__getattribute__, reached through a class, fetches os.system from a module
    reached as an attribute of torch (torch.os)."""
    fn = call(g("builtins", "object.__getattribute__"), g("torch", "os"), s("system"))
    return pickle_of(call(fn, s(touch(marker))))


def module_as_attribute(marker: Path) -> bytes:
    """torch.os.system, named as a dotted walk from torch."""
    return pickle_of(call(g("torch", "os.system"), s(touch(marker))))


def rebuild_calls_getattr(marker: Path) -> bytes:
    """A getattr that is never called by the stream, but by an allowlisted rebuild
    function: _rebuild_from_type_v2(func, type, args, state) calls func(*args)."""
    bound = call(g("builtins", "getattr"), call(g("pathlib", "Path"), s(str(marker))),
                 s("touch"))
    return pickle_of(call(g("torch._tensor", "_rebuild_from_type_v2"), bound,
                          g("torch", "Tensor"), EMPTY_TUPLE, EMPTY_DICT))


def build_plants_setstate(marker: Path) -> bytes:
    """BUILD puts __setstate__ into an instance's __dict__; a second BUILD calls it."""
    obj = g("argparse", "Namespace") + EMPTY_TUPLE + NEWOBJ
    first = d(__setstate__=g("torch.utils.collect_env", "run")) + BUILD
    second = s(touch(marker)) + BUILD
    return pickle_of(obj + first + second)


def partial_of_function(marker: Path) -> bytes:
    """functools.partial of a function, then the partial is called."""
    part = call(g("functools", "partial"), g("torch.utils.collect_env", "run"),
                s(touch(marker)))
    return pickle_of(call(part))


def reduce_via_map(marker: Path) -> bytes:
    """list(map(f, xs)): a class that consumes a lazy call of a function."""
    mapped = call(g("builtins", "map"), g("torch.utils.collect_env", "run"),
                  b"]" + MARK + s(touch(marker)) + b"e")
    return pickle_of(call(g("builtins", "list"), mapped))


HOSTILE = [
    ("import_dotted_name.pkl", import_dotted_name, "torch._utils._import_dotted_name"),
    ("logging_dictconfig.pkl", logging_dictconfig, "logging.config.dictConfig"),
    ("logging_resolve.pkl", logging_resolve, "logging.config._resolve"),
    ("fx_exec.pkl", fx_exec, "torch.fx.graph_module._exec_with_source"),
    ("collect_env_run.pkl", collect_env_run, "torch.utils.collect_env.run"),
    ("torch_save.pkl", torch_save, "torch.save"),
    ("pathlib_write.pkl", pathlib_write, "pathlib.Path.write_text"),
    ("numpy_memmap.pkl", numpy_memmap, "numpy.memmap"),
    ("gzip_file.pkl", gzip_file, "gzip.GzipFile"),
    ("logging_file_handler.pkl", logging_file_handler, "logging.FileHandler"),
    ("operator_getitem.pkl", operator_getitem, "_operator.getitem"),
    ("getattribute_through_class.pkl", getattribute_through_class,
     "builtins.object.__getattribute__"),
    ("module_as_attribute.pkl", module_as_attribute, "torch.os.system"),
    ("rebuild_calls_getattr.pkl", rebuild_calls_getattr, None),
    ("build_plants_setstate.pkl", build_plants_setstate, None),
    ("partial_of_function.pkl", partial_of_function, None),
    ("reduce_via_map.pkl", reduce_via_map, "torch.utils.collect_env.run"),
]


# -- more of the same classes ------------------------------------------------------------------
def reconstructor_base_acts(marker: Path) -> bytes:
    """copyreg._reconstructor(cls, base, state) runs base.__init__(obj, state): a base
    class whose constructor opens the file named by the state."""
    return pickle_of(call(g("copyreg", "_reconstructor"), g("logging", "FileHandler"),
                          g("logging", "FileHandler"), s(str(marker))))


def newobj_ex_kwargs(marker: Path) -> bytes:
    """NEWOBJ_EX with keyword arguments only: numpy.memmap.__new__ creates the file."""
    kwargs = d(filename=s(str(marker)), dtype=s("uint8"), mode=s("w+"), shape=t(i(4)))
    return pickle_of(g("numpy", "memmap") + EMPTY_TUPLE + kwargs + b"\x92")


MORE = [
    ("reconstructor_base_acts.pkl", reconstructor_base_acts, "logging.FileHandler"),
    ("newobj_ex_kwargs.pkl", newobj_ex_kwargs, "numpy.memmap"),
]
HOSTILE += MORE


# -- found by a red-team round -----------------------------------------------------------------
def _bytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def _os_system(marker: Path) -> bytes:
    return pickle_of(call(g("os", "system"), s(touch(marker))))


LOAD_FROM_BYTES = g("torch.storage", "_load_from_bytes")


def nested_bytes_popped(marker: Path) -> bytes:
    """_load_from_bytes (torch.load of its bytes, weights_only=False) whose result is
    popped: it never reaches the object's tree."""
    return pickle_of(call(LOAD_FROM_BYTES, _bytes(_os_system(marker))) + POP + d(a=i(1)))


def nested_bytes_codec_alias(marker: Path) -> bytes:
    """The nested checkpoint spelled as _codecs.encode(str, 'l1') (a latin-1 alias)."""
    text = s(_os_system(marker).decode("latin-1"))
    return pickle_of(d(x=call(LOAD_FROM_BYTES, call(g("_codecs", "encode"), text, s("l1")))))


def nested_bytes_as_key(marker: Path) -> bytes:
    """The nested checkpoint inside a dict key (bytearray around the bytes)."""
    raw = call(g("builtins", "bytearray"), _bytes(_os_system(marker)))
    return pickle_of(EMPTY_DICT + t(call(LOAD_FROM_BYTES, raw)) + i(1) + SETITEM)


def setstate_unpickles(marker: Path) -> bytes:
    """A torch class whose __setstate__ runs pickle.loads on its state."""
    return pickle_of(g("torch.utils.data.datapipes.datapipe", "_IterDataPipeSerializationWrapper")
                     + EMPTY_TUPLE + NEWOBJ + t(_bytes(_os_system(marker)), b"\x89") + BUILD)


def build_plants_extend(marker: Path) -> bytes:
    """BUILD sets an instance attribute 'extend' that APPENDS then calls with the items."""
    return pickle_of(call(g("collections", "OrderedDict")) + d(extend=g(
        "torch.utils.collect_env", "run")) + BUILD + MARK + s("touch") + s(str(marker)) + b"e")


def metaclass_setstate(marker: Path) -> bytes:
    """A class made at load time by abc.ABCMeta, whose __setstate__ is a file handler."""
    cls = call(g("abc", "ABCMeta"), s("X"), t(g("builtins", "object")),
               d(__setstate__=g("logging", "FileHandler")))
    obj = call(g("copyreg", "_reconstructor"), cls, g("builtins", "object"), b"N")
    return pickle_of(obj + s(str(marker)) + BUILD)


def groupby_key(marker: Path) -> bytes:
    """list(itertools.groupby(items, key)): the key function runs on each item."""
    items = b"]" + MARK + s(touch(marker)) + b"e"
    return pickle_of(call(g("builtins", "list"), call(g("itertools", "groupby"), items,
                                                      g("torch.utils.collect_env", "run"))))


def sympy_parse(marker: Path) -> bytes:
    """sympy (installed with torch) evaluates an expression string as Python."""
    return pickle_of(call(g("sympy", "sympify"),
                          s(f"__import__('os').system('{touch(marker)}')")))


REDTEAM = [
    ("nested_bytes_popped.pkl", nested_bytes_popped, "os.system"),
    ("nested_bytes_codec_alias.pkl", nested_bytes_codec_alias, "os.system"),
    ("nested_bytes_as_key.pkl", nested_bytes_as_key, "os.system"),
    ("setstate_unpickles.pkl", setstate_unpickles,
     "torch.utils.data.datapipes.datapipe._IterDataPipeSerializationWrapper"),
    ("build_plants_extend.pkl", build_plants_extend, None),
    ("metaclass_setstate.pkl", metaclass_setstate, "abc.ABCMeta"),
    ("groupby_key.pkl", groupby_key, "torch.utils.collect_env.run"),
    ("sympy_parse.pkl", sympy_parse, "sympy.sympify"),
]
HOSTILE += REDTEAM


# -- found by a second red-team round: a BUILD state that is a dict subclass -----------------
# C's load_build takes any dict as the state (PyDict_Check): an OrderedDict plants methods as
# well as a plain dict does, and was not looked into.
RUN = g("torch.utils.collect_env", "run")


def _ordered(**items: bytes) -> bytes:
    return call(g("collections", "OrderedDict")) + b"".join(
        s(k) + v + SETITEM for k, v in items.items())


def ordered_state_setstate(marker: Path) -> bytes:
    """An OrderedDict state plants __setstate__; a second BUILD calls it."""
    return pickle_of(_ordered() + _ordered(__setstate__=RUN) + BUILD + s(touch(marker))
                     + BUILD)


def ordered_slotstate_append(marker: Path) -> bytes:
    """(None, OrderedDict) as the state: its slot state plants 'append', APPEND calls it."""
    return pickle_of(_ordered() + t(b"N", _ordered(append=RUN)) + BUILD + s(touch(marker))
                     + b"a")


def ordered_state_extend(marker: Path) -> bytes:
    """An OrderedDict state plants 'extend', APPENDS calls it with the items."""
    return pickle_of(_ordered() + _ordered(extend=RUN) + BUILD + MARK + s("touch")
                     + s(str(marker)) + b"e")


def ordered_from_pairs_setstate(marker: Path) -> bytes:
    """The state is OrderedDict([('__setstate__', run)]): the pair is an argument, not a
    SETITEM."""
    pairs = b"]" + MARK + t(s("__setstate__"), RUN) + b"e"
    state = call(g("collections", "OrderedDict"), pairs)
    return pickle_of(_ordered() + state + BUILD + s(touch(marker)) + BUILD)


REDTEAM2 = [
    ("ordered_state_setstate.pkl", ordered_state_setstate, "torch.utils.collect_env.run"),
    ("ordered_slotstate_append.pkl", ordered_slotstate_append, "torch.utils.collect_env.run"),
    ("ordered_state_extend.pkl", ordered_state_extend, "torch.utils.collect_env.run"),
    ("ordered_from_pairs_setstate.pkl", ordered_from_pairs_setstate,
     "torch.utils.collect_env.run"),
]
HOSTILE += REDTEAM2


def ordered_from_list_pairs_setstate(marker: Path) -> bytes:
    """The same with the pair written as a list: OrderedDict([['__setstate__', run]])."""
    pair = b"]" + MARK + s("__setstate__") + RUN + b"e"
    state = call(g("collections", "OrderedDict"), b"]" + MARK + pair + b"e")
    return pickle_of(_ordered() + state + BUILD + s(touch(marker)) + BUILD)


HOSTILE.append(("ordered_from_list_pairs_setstate.pkl", ordered_from_list_pairs_setstate,
                "torch.utils.collect_env.run"))
