"""NumPy's ``.npy`` files (``numpy.save``), alone or as members of an ``.npz`` archive.

The format (``numpy/lib/format.py``): the magic ``\\x93NUMPY``, a major and minor
version, the header's length (2 bytes in version 1, 4 in versions 2 and 3), then the
header, a Python dict literal with ``descr``, ``fortran_order`` and ``shape``, then the
data. An array of plain numbers is raw bytes: ``numpy.load`` runs nothing, and it is
shown as one tensor whose values read from the file. An array whose dtype holds Python
objects is a **pickle** after the header: ``numpy.load(path, allow_pickle=True)`` runs
``pickle.load`` on it, so that stream is interpreted and scanned like any other.

The header is read the way numpy reads it (``ast.literal_eval``, the same keys and
checks), within bounds numpy does not set once ``allow_pickle`` is given: a header over
:data:`MAX_HEADER` bytes is refused, never called safe.
"""

from __future__ import annotations

import ast
import io
import struct
import tokenize
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats._common import build_tree, new_checkpoint, run_pickle
from ckpt_inspector.core.io.source import Source
from ckpt_inspector.core.tree import Checkpoint, Node, StorageInfo, TensorInfo

NAME = "npy"
MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 20  # numpy's own limit is 10,000 bytes, lifted by allow_pickle=True
MAX_NDIM = 64  # numpy's NPY_MAXDIMS
OBJECTS = "object array"  # the member name of the pickle an object array holds


def sniff(head: bytes) -> bool:
    return head[:6] == MAGIC


@dataclass
class Header:
    version: tuple[int, int]
    descr: Any
    fortran_order: bool
    shape: tuple[int, ...]
    data_start: int  # where the data (or the object array's pickle) starts
    dtype: Any  # numpy.dtype


def parse_header(src: Source) -> Header:
    """The header as ``numpy.lib.format.read_array_header_*`` reads it; CheckpointError
    (with numpy's reason, in other words) where numpy would refuse the file."""
    first = bytes(src.read(0, 10))
    if len(first) < 8 or first[:6] != MAGIC:
        raise CheckpointError("npy header is truncated")
    major, minor = first[6], first[7]
    if (major, minor) not in ((1, 0), (2, 0), (3, 0)):
        raise CheckpointError(f"npy format version {major}.{minor} is not one numpy reads")
    if major == 1:
        if len(first) < 10:
            raise CheckpointError("npy header is truncated")
        (length,), start = struct.unpack("<H", first[8:10]), 10
    else:
        raw = bytes(src.read(8, 4))
        if len(raw) < 4:
            raise CheckpointError("npy header is truncated")
        (length,), start = struct.unpack("<I", raw), 12
    if length > MAX_HEADER:
        raise CheckpointError(f"npy header of {length:,} bytes: more than the "
                              f"{MAX_HEADER:,} ckpt-inspector reads")
    raw = bytes(src.read(start, length))
    if len(raw) < length:
        raise CheckpointError("npy header is truncated")
    try:
        d = _literal(raw.decode("utf8" if major == 3 else "latin1"), major < 3)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError,
            tokenize.TokenError) as err:  # numpy.load fails on it too
        raise CheckpointError(f"npy header is not a Python literal: {str(err)[:200]}") \
            from None
    if not isinstance(d, dict) or d.keys() != {"descr", "fortran_order", "shape"}:
        raise CheckpointError("npy header is not a dict of descr, fortran_order and shape")
    shape, fortran = d["shape"], d["fortran_order"]
    # numpy's checks (a negative size passes them: an object array's pickle still runs)
    if not (isinstance(shape, tuple) and all(isinstance(x, int) for x in shape)):
        raise CheckpointError(f"npy shape is not a tuple of ints: {str(shape)[:80]}")
    if not isinstance(fortran, bool):
        raise CheckpointError("npy fortran_order is not a bool")
    import numpy as np  # (only for a header that is one: scan starts without numpy)

    try:
        dtype = np.lib.format.descr_to_dtype(d["descr"])
    except Exception as err:  # numpy refuses it too: any descr it cannot make
        raise CheckpointError(f"npy descr is not a dtype numpy reads: {err}") from None
    return Header((major, minor), d["descr"], fortran, shape, start + length, dtype)


def _literal(text: str, python2: bool) -> Any:
    """``ast.literal_eval`` of the header; a header of version 1 or 2 that does not parse
    is tried again without the ``L`` of Python 2's long integers, as numpy does."""
    try:
        return ast.literal_eval(text)
    except SyntaxError:
        if not python2:
            raise
    tokens, after_number = [], False
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if after_number and token.type == tokenize.NAME and token.string == "L":
            continue  # (as numpy: what follows a dropped L still follows a number)
        tokens.append(token)
        after_number = token.type == tokenize.NUMBER
    return ast.literal_eval(tokenize.untokenize(tokens))


def read(src: Source) -> Checkpoint:
    ckpt = new_checkpoint(src, NAME)
    root = Node("dict", None, "npy")
    stem = src.name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem[:-4] if stem.lower().endswith(".npy") else stem
    try:
        node = read_into(ckpt, src, "")
    except CheckpointError as err:
        if err.partial is None:
            err.partial = ckpt
        ckpt.root = root
        _tar_view(ckpt, src)  # what torch.load reads of it all the same
        raise
    node.key = stem or "array"
    root.add(node)
    ckpt.root = root
    _tar_view(ckpt, src)
    return ckpt


def _tar_view(ckpt: Checkpoint, src: Source) -> None:
    """An .npy whose first block is also a tar header torch.load accepts: numpy.load reads
    an array, torch.load the tar's pickles. Such a polyglot is dangerous, and what the tar
    holds is scanned too."""
    from ckpt_inspector.core.findings import DANGEROUS, Finding
    from ckpt_inspector.core.formats import _tar_listing, torch_tar

    if not torch_tar.sniff(src.head()) or not _tar_listing.runs_pickles(src):
        return
    ckpt.findings.append(Finding(
        DANGEROUS, "polyglot", "the file is an .npy to numpy.load and a legacy torch tar "
        "checkpoint to torch.load: it reads as two different things to two loaders"))
    try:
        view = torch_tar.read(src)
    except CheckpointError as err:
        view = err.partial
    if view is not None:
        for record in view.pickles:
            record.member = f"(as tar) {record.member}"
        ckpt.pickles.extend(view.pickles)
        ckpt.findings.extend(view.findings)


def read_into(ckpt: Checkpoint, src: Source, label: str) -> Node:
    """The node of the array in one ``.npy`` (``label``: where it lies in an archive): a
    tensor, or the objects an object array's pickle builds."""
    header = parse_header(src)
    dtype = header.dtype
    if not label:
        ckpt.metadata["npy version"] = "{}.{}".format(*header.version)
        ckpt.metadata["dtype"] = dtype.str if not dtype.fields else str(dtype.descr)[:200]
    if dtype.hasobject:
        # numpy.load(allow_pickle=True): pickle.load(fp) from the end of the header
        data = src.buffer()
        if not isinstance(data, (bytes, bytearray)):  # (a stored member's view)
            data = bytes(data) if isinstance(data, memoryview) else data
        result = run_pickle(ckpt, data, f"{label}{OBJECTS}", header.data_start,
                            expect_end=False, end_hint=len(src))
        return build_tree(ckpt, result.value)
    return Node("tensor", None, "numpy.ndarray", None, _tensor(src, header))


# numpy kind + item size -> torch's dtype name, for what a tensor can show
_PLAIN = {("f", 8): "float64", ("f", 4): "float32", ("f", 2): "float16",
          ("c", 16): "complex128", ("c", 8): "complex64",
          ("i", 8): "int64", ("i", 4): "int32", ("i", 2): "int16", ("i", 1): "int8",
          ("u", 8): "uint64", ("u", 4): "uint32", ("u", 2): "uint16", ("u", 1): "uint8",
          ("b", 1): "bool"}


def _tensor(src: Source, header: Header) -> TensorInfo:
    dtype, shape = header.dtype, header.shape
    # checked before multiplying: a product of 500,000 sizes is quadratic in big integers
    bad_shape = len(shape) > MAX_NDIM or any(type(s) is not int or s < 0 for s in shape)
    numel = 1
    for s in () if bad_shape else shape:
        numel *= s
    plain = _PLAIN.get((dtype.kind, dtype.itemsize)) if dtype.fields is None and \
        dtype.subdtype is None else None
    info = TensorInfo(plain or f"numpy:{dtype.str}"[:60], () if bad_shape else shape,
                      device="cpu")
    nbytes = numel * dtype.itemsize
    have = len(src) - header.data_start
    if bad_shape:
        info.problem = f"npy shape {str(shape[:8])[:80]}… ({len(shape):,} sizes) is not one " \
            "numpy can make" if len(shape) > 8 else f"npy shape {shape} is not one numpy can make"
    elif plain is None:
        info.problem = f"numpy dtype {str(dtype)[:60]!r} has no tensor type to show it as"
    elif nbytes > have:
        info.problem = (f"truncated: the array needs {nbytes:,} bytes, the file has "
                        f"{max(have, 0):,} after the header")
    if info.problem is not None:
        return info
    if header.fortran_order and len(shape) > 1:  # column-major: the first index is fastest
        stride, step = [], 1
        for s in shape:
            stride.append(step)
            step *= max(s, 1)
        info.stride = tuple(stride)
    order = "big" if dtype.byteorder == ">" else "little"
    info.storage = StorageInfo("data", plain, numel, "cpu",
                               src.range(header.data_start, nbytes, order))
    return info
