"""torch.save's run of opcodes for one tensor, interpreted in one step.

After its first tensor, ``torch.save`` writes every tensor of a state_dict as the same
run of about thirty opcodes: the key's memo slot, a memo get of ``_rebuild_tensor_v2``,
the persistent id ``('storage', <class>, '<key>', <location>, numel)`` built from memo
gets, the offset, the size and stride tuples, ``requires_grad`` and an empty
``OrderedDict()``. Interpreting it opcode by opcode is most of the time a 100,000-tensor
file takes to read, so :func:`tensor_run` matches the whole run with one regular
expression (C speed) and applies its effects on the interpreter's stack and memo in the
order the opcodes would.

The effects are exactly those of the opcodes it stands for: the same memo slots written
in the same order, the same :class:`Call` records, the same ``persistent_load`` call, the
same tuple checks at the same offsets. Whatever it cannot prove it can do that way (a memo
get of a slot the run itself writes, a slot not yet written, a storage key whose length
does not match its bytes, a run crossing a frame's end) it leaves to the opcode loop,
which then reads those bytes one opcode at a time. The matched opcodes are all protocol 2
ones the interpreter counts as common (none is a "rare" opcode the verdict looks at).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from ckpt_inspector.core.pickle.values import Call, PersistentLoad, PersistentRef

_UNPACK_IU = struct.Struct("<I").unpack_from
_UNPACK_H = struct.Struct("<H").unpack_from
_UNPACK_I = struct.Struct("<i").unpack_from

_INT = rb"(?:K.|M..|J....)"  # BININT1, BININT2, BININT
_PUT = rb"(q.|r....)"  # BINPUT, LONG_BINPUT
_GET = rb"(h.|j....)"  # BINGET, LONG_BINGET
_OPT_PUT = rb"(q.|r....)?"
# a tuple of ints: EMPTY_TUPLE, TUPLE1/2/3 after as many ints, or MARK ints TUPLE
# (bounded: an unbounded repeat makes the regex engine keep state per item, a file of
# millions of ints in one uninterruptible call; a tensor has far fewer dimensions)
_TUPLE = (rb"(\)|" + _INT + rb"\x85|" + _INT * 2 + rb"\x86|" + _INT * 3 + rb"\x87|\("
          + _INT + rb"{0,64}t)")

# Starts right after the key's BINUNICODE; groups are numbered as :func:`tensor_run` reads them.
TENSOR_RUN = re.compile(
    _PUT  # 1: the key's slot
    + _GET  # 2: _rebuild_tensor_v2
    + rb"\(\("  # MARK MARK
    + _GET + _GET  # 3: 'storage', 4: the storage class
    + rb"X(.)\x00\x00\x00([0-9]{1,32})"  # 5: the storage key's length, 6: its digits
    + _PUT  # 7: its slot
    + _GET  # 8: the location
    + rb"(" + _INT + rb")"  # 9: numel
    + rb"t" + _PUT  # 10: TUPLE (the persistent id), its slot
    + rb"Q(" + _INT + rb")"  # BINPERSID; 11: the storage offset
    + _TUPLE + _OPT_PUT  # 12: size, 13: its slot
    + _TUPLE + _OPT_PUT  # 14: stride, 15: its slot
    + rb"([\x88\x89])"  # 16: requires_grad
    + _GET  # 17: OrderedDict
    + rb"\)R" + _PUT  # EMPTY_TUPLE REDUCE; 18: its slot
    + rb"t" + _PUT  # 19: the arguments' TUPLE and slot
    + rb"R" + _PUT,  # 20: REDUCE and its slot
    re.S)

# opcodes in a run besides those of its two tuples
_FIXED_OPS = 23


class LoadFailed(Exception):
    """``persistent_load`` raised one of the errors the opcode loop turns into a
    :class:`PickleError` at the opcode's offset: the loop re-raises ``error`` as if at the
    BINPERSID at ``at``."""

    def __init__(self, error: BaseException, at: int):
        super().__init__(error, at)
        self.error = error
        self.at = at

unpack = _UNPACK_IU  # a memo index: raw[1] if BINPUT/BINGET, else this at 1


def _int(raw: bytes) -> int:
    op = raw[0]
    if op == 0x4B:
        return raw[1]
    if op == 0x4D:
        return _UNPACK_H(raw, 1)[0]
    return _UNPACK_I(raw, 1)[0]


_INTS = re.compile(rb"K.|M..|J....", re.S)
# decoded int tuples by their bytes, with their opcode count (a model has few shapes);
# copied before use
_tuples: dict[bytes, tuple[tuple[int, ...], int]] = {}
_MAX_CACHED = 4096


def _int_tuple(raw: bytes) -> tuple[tuple[int, ...], int]:
    found = _tuples.get(raw)
    if found is not None:
        return found
    if raw == b")":
        found = ((), 1)
    else:
        ints = _INTS.findall(raw, 1 if raw[0] == 0x28 else 0)
        found = (tuple(_int(i) for i in ints), len(ints) + (2 if raw[0] == 0x28 else 1))
    if len(_tuples) < _MAX_CACHED:
        _tuples[raw] = found
    return found


def _resolve(persistent_load: PersistentLoad, pid: Any, at: int) -> Any:
    try:
        return persistent_load(pid, at)
    except (IndexError, KeyError, TypeError, struct.error) as err:
        raise LoadFailed(err, at) from err  # the loop reports it at BINPERSID


def tensor_run(
    data: Any, pos: int, limit: int, key: Any, memo: dict[int, Any], calls: list[Call],
    persistent_load: PersistentLoad | None, deep: Callable[[tuple[Any, ...], int], Any],
    tuple_depth: dict[int, int], tuple_cost: dict[int, int], alive: list[Any], ops_left: int,
) -> tuple[Call, int, int] | None:
    """Interpret the tensor run that starts at ``pos``, just after a key's BINUNICODE
    (``key``, the string on top of the stack). Returns the call to push on the stack, the
    position after the run and the number of opcodes it holds; or None, having changed
    nothing, when there is no such run at ``pos`` or the opcode loop must read it (see the
    module's docstring). ``limit`` is where the current frame (or the data) ends;
    ``ops_left`` how many opcodes may be read before the budget is next checked.
    ``deep``, ``tuple_depth``, ``tuple_cost`` and ``alive`` are the loop's record of nested
    tuples (see ``vm._loop``)."""
    m = TENSOR_RUN.match(data, pos)
    if m is None:
        return None
    end = m.end()
    if end > limit:
        return None
    (put_key, get_fn, get_storage, get_class, key_len, storage_key, put_storage_key,
     get_location, numel, put_pid, offset, size, put_size, stride, put_stride, grad, get_od,
     put_od, put_args, put_call) = m.groups()
    if len(storage_key) != key_len[0]:
        return None
    size_value, size_ops = _tuples.get(size) or _int_tuple(size)
    stride_value, stride_ops = _tuples.get(stride) or _int_tuple(stride)
    # new tuples, as the opcodes make (the cache's are never handed out: identity counts)
    size_value = (*size_value,)
    stride_value = (*stride_value,)
    n_ops = _FIXED_OPS + size_ops + stride_ops
    # Every slot the run writes must be new: the gets, which read slots written before
    # the run, then cannot read what the run writes, and can all be made first.
    i_key = put_key[1] if len(put_key) == 2 else unpack(put_key, 1)[0]
    i_skey = put_storage_key[1] if len(put_storage_key) == 2 else unpack(put_storage_key, 1)[0]
    i_pid = put_pid[1] if len(put_pid) == 2 else unpack(put_pid, 1)[0]
    if i_key in memo or i_skey in memo or i_pid in memo:
        return None
    if put_size is not None:
        n_ops += 1
        i_size = put_size[1] if len(put_size) == 2 else unpack(put_size, 1)[0]
        if i_size in memo:
            return None
    if put_stride is not None:
        n_ops += 1
        i_stride = put_stride[1] if len(put_stride) == 2 else unpack(put_stride, 1)[0]
        if i_stride in memo:
            return None
    if n_ops >= ops_left:
        return None
    try:
        fn = memo[get_fn[1] if len(get_fn) == 2 else unpack(get_fn, 1)[0]]
        storage = memo[get_storage[1] if len(get_storage) == 2 else unpack(get_storage, 1)[0]]
        cls = memo[get_class[1] if len(get_class) == 2 else unpack(get_class, 1)[0]]
        location = memo[get_location[1] if len(get_location) == 2
                        else unpack(get_location, 1)[0]]
        od = memo[get_od[1] if len(get_od) == 2 else unpack(get_od, 1)[0]]
    except KeyError:
        return None

    # the effects, in the opcodes' order
    memo[i_key] = key
    skey = storage_key.decode("ascii")
    memo[i_skey] = skey
    pid = (storage, cls, skey, location, _int(numel))
    if type(storage) is tuple or type(cls) is tuple or type(location) is tuple:
        pid = deep(pid, m.end(9))  # TUPLE
    memo[i_pid] = pid
    at = m.end(10)  # BINPERSID
    ref = PersistentRef(pid, at) if persistent_load is None else _resolve(persistent_load,
                                                                          pid, at)
    if put_size is not None:
        memo[i_size] = size_value
    if put_stride is not None:
        memo[i_stride] = stride_value
    at = m.end(17) + 1  # REDUCE
    od_call = Call(od, (), "reduce", at)
    calls.append(od_call)
    memo[put_od[1] if len(put_od) == 2 else unpack(put_od, 1)[0]] = od_call
    at = m.end(18)  # TUPLE
    args = (ref, _int(offset), size_value, stride_value, grad == b"\x88", od_call)
    if type(ref) is tuple:  # a persistent_load may answer anything
        args = deep(args, at)
    else:  # what deep() records for it: two levels; its items and the int tuples'
        tuple_depth[id(args)] = 2
        tuple_cost[id(args)] = 6 + len(size_value) + len(stride_value)
        alive.append(args)
    memo[put_args[1] if len(put_args) == 2 else unpack(put_args, 1)[0]] = args
    call = Call(fn, args, "reduce", at + len(put_args) + 1)
    calls.append(call)
    memo[put_call[1] if len(put_call) == 2 else unpack(put_call, 1)[0]] = call
    return call, end, n_ops
