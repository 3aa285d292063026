"""Export tensors as a state_dict (``.pt``) or a safetensors file, streaming.

Plain Python and numpy, no torch: the ``.pt`` archive is written the way
``torch.save`` writes it (a pickle of ``OrderedDict`` + ``_rebuild_tensor_v2``
records, storages as aligned, uncompressed zip records), so
``torch.load(weights_only=True)`` reads it. Tensor bytes go from the source file
to the output in pieces of 16 MiB, so a 2 GB checkpoint never sits in memory,
let alone twice. Output is written to a temporary file beside the target
(``.NAME.XXXXXXXX.partial``), verified there, and renamed into place only when the
verification passed; the source file is never written.

The long operations are generators that yield :class:`Progress` (each yield is
also a point where a caller may stop) and return their result.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import stat
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.tensors import to_numpy
from ckpt_inspector.core.tree import Checkpoint, Node, TensorInfo, key_of

PIECE = 16 << 20
ALIGN = 64  # torch aligns storage records so they can be memory-mapped
CASTS = ("float32", "float16", "bfloat16")
_NUMPY_FLOATS = {"float64", "float32", "float16", "bfloat16"}
_STORAGE_CLASS = {v: k for k, v in dtypes.STORAGE_CLASSES.items() if k != "UntypedStorage"}
_SAFETENSORS_CODE = {v: k for k, v in dtypes.SAFETENSORS_CODES.items()}


class ExportError(CheckpointError):
    """The export failed (the message says why): exit 1 on the command line."""


class ExportUsageError(ExportError):
    """The export cannot be done as asked (an option, a key, the output path): exit 2."""


class SourceDataError(ExportError):
    """The source file's data cannot be read: exit 3, like any unreadable input."""


# the location tags torch.save records (torch.serialization.location_tag), with an index
_DEVICE = re.compile(r"(cpu|meta|mps|cuda|xpu|hpu|mtia|privateuseone)(:\d+)?")


def check_device(device: str) -> str:
    """A device name torch records and loads (``cpu``, ``cuda:0``, ``mps``...), or
    :class:`ExportUsageError`. Whether this machine has it is not asked: a file recorded
    on ``cuda:0`` can be written anywhere."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ExportUsageError(f"{device!r} is not a device (cpu, cuda, cuda:0, mps, xpu:1, …)")
    return device


# -- what to export ------------------------------------------------------------------------
@dataclass
class Source:
    """A subtree that holds tensors: the whole file, ``model_state_dict``, a module..."""

    key: str
    label: str
    tensors: int
    nbytes: int
    score: float  # how much it looks like a model's weights (for the default choice)


_MODEL_NAMES = ("model_state_dict", "state_dict", "model", "module", "net", "network",
                "weights", "params", "ema", "model_ema")


def sources(ckpt: Checkpoint) -> list[Source]:
    """The whole file and each container near the root that holds tensors, best first."""
    out: list[Source] = []
    stack: list[tuple[Node, int]] = [(ckpt.root, 0)]
    while stack:
        node, depth = stack.pop()
        items = state_dict_items(node)
        if items:
            key = key_of(node.path())
            name = str(node.key or "").lower()
            score = (2.0 if name in _MODEL_NAMES else 0.0) + (1.0 if node.kind == "module" else 0)
            score += 0.5 * (1 - sum("optim" in k or ".state." in k for k, _ in items)
                            / len(items))
            if not key:
                score += 0.25
            total = sum(t.nbytes for _, t in items)
            label = f"{key or '(whole file)'} — {len(items):,} tensors"
            out.append(Source(key, label, len(items), total, score))
        if depth < 2:
            for child in node.children:
                if child.is_container and child.kind != "tensor":
                    stack.append((child, depth + 1))
    out.sort(key=lambda s: (-s.score, -s.nbytes))
    return out


def find_node(ckpt: Checkpoint, key: str) -> Node:
    if not key:
        return ckpt.root
    for node in ckpt.root.walk():
        if node.is_container and key_of(node.path()) == key:
            return node
    raise ExportUsageError(f"no part of the file is called {key!r}")


def state_dict_items(node: Node) -> list[tuple[str, TensorInfo]]:
    """``(key relative to node, tensor)`` for every tensor a state_dict would hold."""
    if node.kind == "tensor" and node.tensor is not None:
        return [("", node.tensor)]
    base = len(node.path())
    out = []
    for n in node.walk():
        if n.kind == "tensor" and n.tensor is not None and n.in_state_dict():
            out.append((key_of(n.path()[base:]), n.tensor))
    return out


# -- key transforms ------------------------------------------------------------------------
@dataclass
class KeyRules:
    """Key changes, applied in this order: include, exclude, strip, rename, add prefix."""

    strip_prefixes: list[str] = field(default_factory=list)
    add_prefix: str = ""
    renames: list[tuple[str, str]] = field(default_factory=list)  # (regex, replacement)
    include: list[str] = field(default_factory=list)  # regexes; empty keeps everything
    exclude: list[str] = field(default_factory=list)

    def _compiled(self, patterns: list[str]) -> list[re.Pattern[str]]:
        try:
            return [re.compile(p) for p in patterns]
        except re.error as err:
            raise ExportUsageError(f"invalid regular expression: {err}") from None

    def apply(self, keys: list[str]) -> list[tuple[str, str | None]]:
        """``(old, new)`` for each key; ``new`` is None for a key left out."""
        include = self._compiled(self.include)
        exclude = self._compiled(self.exclude)
        renames = [(re.compile(p), r) for p, r in self._check_renames()]
        out: list[tuple[str, str | None]] = []
        for key in keys:
            if include and not any(p.search(key) for p in include):
                out.append((key, None))
                continue
            if any(p.search(key) for p in exclude):
                out.append((key, None))
                continue
            new = key
            for prefix in self.strip_prefixes:
                if prefix and new.startswith(prefix):
                    new = new[len(prefix):]
            for pattern, repl in renames:
                new = pattern.sub(repl, new)
            out.append((key, self.add_prefix + new))
        seen: dict[str, str] = {}
        for old, new in out:
            if new is None:
                continue
            if new in seen:
                raise ExportUsageError(f"two keys would both become {new!r}: {seen[new]!r} "
                                       f"and {old!r}")
            seen[new] = old
        return out

    def _check_renames(self) -> list[tuple[str, str]]:
        for pattern, repl in self.renames:
            try:
                re.compile(pattern).sub(repl, "")
            except (re.error, IndexError) as err:
                raise ExportUsageError(f"invalid rename {pattern!r} → {repl!r}: {err}"
                                       ) from None
        return self.renames


def common_prefix(keys: list[str]) -> str:
    """``module.`` for a DataParallel state_dict: the dotted prefix every key shares."""
    if not keys:
        return ""
    first = keys[0].split(".")
    n = len(first) - 1
    for key in keys[1:]:
        parts = key.split(".")
        n = min(n, len(parts) - 1)
        for i in range(n):
            if parts[i] != first[i]:
                n = i
                break
    return ".".join(first[:n]) + "." if n else ""


# -- the plan ------------------------------------------------------------------------------
@dataclass
class Plan:
    source_path: str
    items: list[tuple[str, TensorInfo]]  # (output key, tensor)
    fmt: str  # pt | safetensors
    cast: str | None = None
    device: str = "cpu"
    metadata: dict[str, str] = field(default_factory=dict)
    renamed: int = 0
    excluded: int = 0

    def out_dtype(self, t: TensorInfo) -> str:
        """The cast applies to float64/32/16 and bfloat16 tensors; float8 and the rest
        keep their dtype (counted in :meth:`preview`)."""
        if self.cast and t.dtype in _NUMPY_FLOATS and not t.quantization:
            return self.cast
        return t.dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel * (dtypes.itemsize(self.out_dtype(t)) or 1) for _, t in self.items)

    def preview(self) -> dict[str, Any]:
        kept = sum(1 for _, t in self.items if self.cast and self.out_dtype(t) != self.cast
                   and dtypes.DTYPES[t.dtype].kind == "float")
        return {"tensors": len(self.items), "bytes": self.nbytes, "excluded": self.excluded,
                "renamed": self.renamed, "not_cast": kept,
                "keys": [k for k, _ in self.items[:200]]}


def make_plan(ckpt: Checkpoint, key: str = "", rules: KeyRules | None = None,
              cast: str | None = None, device: str = "cpu", fmt: str = "pt",
              metadata: dict[str, str] | None = None) -> Plan:
    """Which tensors go out under which keys, checked before anything is written."""
    if fmt not in ("pt", "safetensors"):
        raise ExportUsageError(f"unknown state_dict format {fmt!r}")
    if cast is not None and cast not in CASTS:
        raise ExportUsageError(f"dtype casts go to {', '.join(CASTS)}, not {cast!r}")
    check_device(device)
    items = state_dict_items(find_node(ckpt, key))
    if not items:
        raise ExportUsageError("there are no tensors to export there")
    if len(items) == 1 and items[0][0] == "":  # a file that is one bare tensor
        items = [("tensor", items[0][1])]
    mapping = (rules or KeyRules()).apply([k for k, _ in items])
    kept: list[tuple[str, TensorInfo]] = []
    renamed = excluded = 0
    for (old, new), (_k, t) in zip(mapping, items):
        if new is None:
            excluded += 1
            continue
        renamed += new != old
        kept.append((new, t))
    if not kept:
        raise ExportUsageError("the key rules leave no tensor to export")
    plan = Plan(ckpt.path, kept, fmt, cast, device, dict(metadata or {}), renamed, excluded)
    damaged = [k for k, t in kept if t.problem or t.storage is None or t.storage.source is None]
    if damaged:
        raise SourceDataError(f"{len(damaged)} tensor(s) cannot be read, e.g. {damaged[0]!r}: "
                          f"{dict(kept)[damaged[0]].problem or 'no data'}")
    for k, t in kept:
        if t.layout != "strided":
            raise ExportUsageError(f"{k!r} is a {t.layout} tensor: only dense tensors are "
                                   "exported")
        if fmt == "safetensors" and plan.out_dtype(t) not in _SAFETENSORS_CODE:
            raise ExportUsageError(f"{k!r} is {plan.out_dtype(t)}, which safetensors cannot "
                                   "store")
        if t.quantization and (fmt == "safetensors" or not t.quantization["scheme"].startswith(
                "per_tensor")):
            raise ExportUsageError(f"{k!r} is quantized ({t.quantization['scheme']}): export "
                                   "it to .pt, per-tensor quantization only")
    return plan


# -- tensor bytes --------------------------------------------------------------------------
def tensor_pieces(t: TensorInfo, out_dtype: str) -> Iterator[bytes]:
    """The tensor's elements in C order, little-endian, as ``out_dtype``, in pieces."""
    item = t.itemsize
    source = t.storage.source
    contiguous = t.is_contiguous() and source.byteorder == "little"
    if out_dtype == t.dtype and contiguous:
        yield from source.chunks(t.storage_offset * item, t.numel * item, PIECE)
        return
    if contiguous:  # cast piece by piece
        step = PIECE - PIECE % item
        for raw in source.chunks(t.storage_offset * item, t.numel * item, step):
            yield cast_bytes(raw, t.dtype, out_dtype)
        return
    import numpy as np

    arr = np.ascontiguousarray(to_numpy(t))  # one tensor's worth, for strided views
    if arr.dtype.byteorder == ">":
        arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
    raw = memoryview(arr).cast("B")
    step = PIECE - PIECE % item
    for start in range(0, len(raw), step):
        piece = bytes(raw[start:start + step])
        yield piece if out_dtype == t.dtype else cast_bytes(piece, t.dtype, out_dtype)


def cast_bytes(raw: bytes, src: str, dst: str) -> bytes:
    """Convert little-endian float data between float64/32/16 and bfloat16 (round to
    nearest even, NaN kept), with numpy alone. Like torch, float64 goes to the 16-bit
    types through float32; values beyond the target's range become ±inf (the
    verification reports them)."""
    import numpy as np

    if src == "bfloat16":
        f32 = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        f32 = np.frombuffer(raw, dtype={"float64": "<f8", "float32": "<f4",
                                        "float16": "<f2"}[src])
    with np.errstate(over="ignore"):
        if src == "float64" and dst in ("float16", "bfloat16"):
            f32 = f32.astype(np.float32)  # torch rounds twice too: float64 → float → half
        if dst == "bfloat16":
            f32 = np.ascontiguousarray(f32, dtype=np.float32)
            bits = f32.view(np.uint32)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            rounded[np.isnan(f32)] = 0x7FC0
            return rounded.tobytes()
        return f32.astype({"float64": "<f8", "float32": "<f4", "float16": "<f2"}[dst]
                          ).tobytes()


# -- writing -------------------------------------------------------------------------------
def check_target(out_path: str, source_path: str, overwrite: bool) -> None:
    """Refuse an output that is the source, a folder, an existing file (without
    ``overwrite``) or in a folder that does not exist (all :class:`ExportUsageError`)."""
    out = os.path.abspath(out_path)
    if not out_path or out_path.endswith(("/", os.sep)) or os.path.basename(out) in (".", ".."):
        raise ExportUsageError(f"{out_path!r} names a folder: give the file to write")
    if os.path.lexists(out):
        if os.path.exists(source_path) and os.path.exists(out) and os.path.samefile(
                out, source_path):
            raise ExportUsageError("the output would replace the source file: choose another "
                                   "name")
        if os.path.isdir(out):
            raise ExportUsageError(f"{out} is a folder: give the file to write")
        if not overwrite:
            raise ExportUsageError(f"{out} exists (overwrite it explicitly)")
    folder = os.path.dirname(out) or "."
    if not os.path.isdir(folder):
        raise ExportUsageError(f"folder {folder} does not exist")


PARTIAL = ".partial"  # temporary names: .NAME.XXXXXXXX.partial beside the target


def temp_name(out_path: str) -> str:
    """A new, empty temporary file beside ``out_path``, created with the mode the umask
    gives new files (``mkstemp`` would make it 0600)."""
    folder = os.path.dirname(os.path.abspath(out_path))
    base = os.path.basename(out_path)
    while True:
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}{PARTIAL}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def replace_into(tmp: str, out_path: str) -> None:
    """``os.replace``, keeping the permissions of the file being replaced."""
    with contextlib.suppress(OSError):
        os.chmod(tmp, stat.S_IMODE(os.stat(out_path).st_mode))
    os.replace(tmp, out_path)


class StagedFile:
    """A temporary file beside the target: moved into place by :meth:`commit`, removed
    otherwise (an error, Ctrl-C, a failed verification)."""

    def __init__(self, out_path: str):
        self.out_path = out_path
        self.path = temp_name(out_path)
        self.committed = False

    def commit(self) -> None:
        replace_into(self.path, self.out_path)
        self.committed = True

    def discard(self) -> None:
        if not self.committed:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


@contextlib.contextmanager
def staged_file(out_path: str) -> Iterator[StagedFile]:
    """A :class:`StagedFile` that is removed on leaving unless it was committed."""
    staged = StagedFile(out_path)
    try:
        yield staged
    finally:
        staged.discard()


@contextlib.contextmanager
def atomic_file(out_path: str) -> Iterator[str]:
    """A temporary file beside ``out_path``, renamed over it only when writing finished."""
    with staged_file(out_path) as staged:
        yield staged.path
        staged.commit()


def export_state_dict(plan: Plan, out_path: str, overwrite: bool = False,
                      verify: bool = True) -> Iterator[Progress]:
    """Write the plan to a temporary file, read it back (:func:`verify_state_dict`, and
    ``torch.load(weights_only=True)`` for a ``.pt``), and rename it to ``out_path`` only
    when that passed; yields progress. Returns ``{"path", "bytes" (the file's size),
    "written", "verified", "passed"}`` and, when verified, the figures of the check.
    Without ``verify`` the file is renamed into place unchecked."""
    check_target(out_path, plan.source_path, overwrite)
    with staged_file(out_path) as staged:
        writer = _write_pt if plan.fmt == "pt" else _write_safetensors
        yield from writer(plan, staged.path, os.path.splitext(os.path.basename(out_path))[0])
        result: dict[str, Any] = {"path": os.path.abspath(out_path),
                                  "bytes": os.path.getsize(staged.path), "verified": verify}
        passed = True
        if verify:
            check = yield from verify_state_dict(plan, staged.path)
            result.update(check)
            passed = not check["problems"]
            if plan.fmt == "pt":
                result.update(torch_load_check(staged.path))
                passed = passed and result.get("torch_load", True)
        result["passed"] = passed
        if passed:
            staged.commit()
        result["written"] = staged.committed
    return result


def torch_load_check(path: str) -> dict[str, Any]:
    """Does ``torch.load(weights_only=True)`` read the file? Loaded onto the cpu whatever
    device it records (mmap: no second copy); ``{}`` without torch."""
    if importlib.util.find_spec("torch") is None:
        return {}
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {"torch_load": True}
    except Exception as err:
        return {"torch_load": False, "torch_error": (str(err) or type(err).__name__)
                .splitlines()[0]}


def _write_safetensors(plan: Plan, tmp: str, _stem: str) -> Iterator[Progress]:
    header: dict[str, Any] = {}
    pos = 0
    for key, t in plan.items:
        out = plan.out_dtype(t)
        n = t.numel * (dtypes.itemsize(out) or 1)
        header[key] = {"dtype": _SAFETENSORS_CODE[out], "shape": list(t.shape),
                       "data_offsets": [pos, pos + n]}
        pos += n
    if plan.metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in plan.metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    total = pos
    done = 0
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, t in plan.items:
            for piece in tensor_pieces(t, plan.out_dtype(t)):
                f.write(piece)
                done += len(piece)
                yield Progress("writing", done, total, key)


def _write_pt(plan: Plan, tmp: str, stem: str) -> Iterator[Progress]:
    root = re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "archive"
    # storages: shared (and views kept) when a tensor is written as it is; a new one per
    # tensor when it is cast
    storage_keys: dict[int, str] = {}
    records: list[tuple[str, Callable[[], Iterator[bytes]], int]] = []
    entries = []
    for key, t in plan.items:
        out = plan.out_dtype(t)
        st = t.storage
        if out == t.dtype and st.source.byteorder == "little":
            sid = id(st)
            if sid not in storage_keys:
                storage_keys[sid] = str(len(records))
                records.append((storage_keys[sid],
                                lambda st=st: st.source.chunks(0, st.nbytes, PIECE),
                                st.nbytes))
            entries.append((key, storage_keys[sid], st.dtype, st.numel, t.storage_offset,
                            t.shape, t.stride or _strides(t.shape), out, t))
        else:
            skey = str(len(records))
            n = t.numel * (dtypes.itemsize(out) or 1)
            records.append((skey, lambda t=t, out=out: tensor_pieces(t, out), n))
            entries.append((key, skey, out, t.numel, 0, t.shape, _strides(t.shape), out, t))
    pickle_bytes = _state_dict_pickle(entries, plan.device)
    total = sum(n for _k, _f, n in records)
    done = 0
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _add(zf, f"{root}/data.pkl", [pickle_bytes], len(pickle_bytes), align=False)
        _add(zf, f"{root}/.format_version", [b"1"], 1, align=False)
        _add(zf, f"{root}/.storage_alignment", [b"64"], 2, align=False)
        _add(zf, f"{root}/byteorder", [b"little"], 6, align=False)
        for skey, pieces, n in records:
            def counted(it: Iterator[bytes]) -> Iterator[bytes]:
                nonlocal done
                for piece in it:
                    done += len(piece)
                    yield piece
            progress = Progress("writing", done, total, f"storage {skey}")
            yield progress
            _add(zf, f"{root}/data/{skey}", counted(pieces()), n, align=True)
        _add(zf, f"{root}/version", [b"3\n"], 2, align=False)
    yield Progress("writing", total, total, "done")


def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(out))


def _add(zf: zipfile.ZipFile, name: str, pieces: Any, size: int, align: bool) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    large = size >= 0x7FFFFFFF
    if align:
        # pad the local header's extra field so the data starts on a 64-byte boundary
        offset = zf.fp.tell() + 30 + len(name.encode()) + (20 if large else 0)
        pad = -(offset + 4) % ALIGN
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB", as torch does
    info.file_size = size
    written = 0
    with zf.open(info, "w", force_zip64=large) as w:
        for piece in pieces:
            w.write(piece)
            written += len(piece)
    if written != size:
        raise ExportError(f"{name}: wrote {written:,} bytes, expected {size:,}")


# a pickle in the shape torch.save writes (protocol 2), built opcode by opcode
def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(2**31) <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _state_dict_pickle(entries: list[tuple], device: str) -> bytes:
    """``OrderedDict`` of tensors, opcode for opcode what ``torch.save`` writes."""
    hooks = b"h\x00)R"  # OrderedDict() (memo 0 holds the class): empty backward hooks
    out = [b"\x80\x02ccollections\nOrderedDict\nq\x00)R("]
    for key, skey, sdtype, snumel, offset, shape, stride, tdtype, t in entries:
        cls = _STORAGE_CLASS.get(sdtype)
        if cls is not None:
            pid = (b"(" + _str("storage") + f"ctorch\n{cls}\n".encode() + _str(skey)
                   + _str(device) + _int(snumel) + b"t")
        else:  # no typed storage class for this dtype: untyped bytes + the dtype
            nbytes = snumel * (dtypes.itemsize(sdtype) or 1)
            pid = (b"(" + _str("storage") + b"ctorch.storage\nUntypedStorage\n" + _str(skey)
                   + _str(device) + _int(nbytes) + b"t")
        view = pid + b"Q" + _int(offset) + _tuple(shape) + _tuple(stride)
        if t.quantization:
            q = t.quantization
            params = (b"(ctorch\n" + q["scheme"].encode() + b"\nG" + struct.pack(">d", q["scale"])
                      + _int(q["zero_point"]) + b"t")
            rebuild = (b"ctorch._utils\n_rebuild_qtensor\n(" + view + params + b"\x89" + hooks
                       + b"tR")
        elif cls is not None and sdtype == tdtype:
            rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n(" + view + b"\x89" + hooks + b"tR"
        else:
            rebuild = (b"ctorch._utils\n_rebuild_tensor_v3\n(" + view + b"\x89" + hooks
                       + f"ctorch\n{tdtype}\n".encode() + b"tR")
        out.append(_str(key) + rebuild)
    out.append(b"u.")
    return b"".join(out)


# -- verification ------------------------------------------------------------------------
def _rechunk(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    buf = b""
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def _as_float64(raw: bytes, dtype: str) -> Any:
    import numpy as np

    if dtype == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(
            np.float64)
    return np.frombuffer(raw, {"float64": "<f8", "float32": "<f4", "float16": "<f2"}[dtype]
                         ).astype(np.float64)


def _torch_cast(raw: bytes, src: str, dst: str) -> Any:
    """torch's own ``.to(dst)`` of little-endian ``src`` data: the reference a cast is
    checked against (None without torch or on a big-endian machine)."""
    if sys.byteorder != "little" or importlib.util.find_spec("torch") is None:
        return None
    import numpy as np
    import torch

    t = torch.frombuffer(bytearray(raw), dtype=getattr(torch, src)) if raw else \
        torch.empty(0, dtype=getattr(torch, src))
    out = t.to(getattr(torch, dst))
    return np.frombuffer(out.view(torch.uint8).numpy().tobytes(),
                         {"float64": "<u8", "float32": "<u4"}.get(dst, "<u2"))


_FLOAT_MAX = {"float64": 1.7976931348623157e308, "float32": 3.4028234663852886e38,
              "float16": 65504.0, "bfloat16": 3.3895313892515355e38}


class _CastCheck:
    """One cast tensor compared with its source, piece by piece: overflow to ±inf where the
    source was finite, NaN gained or lost, and elements that differ from torch's cast."""

    def __init__(self, key: str, src: str, dst: str):
        self.key, self.src, self.dst = key, src, dst
        self.overflow = self.nan_gained = self.nan_lost = self.differ = 0
        self.largest = 0.0
        self.max_diff = 0.0
        self.reference = True

    def add(self, a: bytes, b: bytes) -> None:
        import numpy as np

        x, y = _as_float64(a, self.src), _as_float64(b, self.dst)
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(x)
            over = finite & np.isinf(y)
            if over.any():
                self.overflow += int(over.sum())
                self.largest = max(self.largest, float(np.max(np.abs(x[over]))))
            nan_x, nan_y = np.isnan(x), np.isnan(y)
            self.nan_gained += int((nan_y & ~nan_x).sum())
            self.nan_lost += int((nan_x & ~nan_y).sum())
            both = finite & np.isfinite(y)
            if both.any():
                self.max_diff = max(self.max_diff, float(np.max(np.abs(x[both] - y[both]))))
        ref = _torch_cast(a, self.src, self.dst)
        if ref is None:
            self.reference = False
            return
        got = np.frombuffer(b, ref.dtype)
        self.differ += int(((ref != got) & ~(nan_y & np.isnan(_as_float64(ref.tobytes(),
                                                                          self.dst)))).sum())

    def problems(self) -> list[str]:
        out = []
        if self.overflow:
            out.append(f"{self.key}: {self.overflow:,} finite value(s) overflow to ±inf in "
                       f"{self.dst} (largest |value| {self.largest:.6g}; {self.dst} holds "
                       f"at most {_FLOAT_MAX[self.dst]:.6g})")
        if self.nan_gained:
            out.append(f"{self.key}: {self.nan_gained:,} value(s) became NaN")
        if self.nan_lost:
            out.append(f"{self.key}: {self.nan_lost:,} NaN value(s) were not kept")
        if self.differ:
            out.append(f"{self.key}: {self.differ:,} value(s) differ from torch's own cast "
                       f"to {self.dst}")
        return out


def verify_state_dict(plan: Plan, out_path: str) -> Iterator[Progress]:
    """Read the written file back with the reader and compare every tensor with its source:
    bytes for tensors written as they were; for cast ones, each element against torch's own
    ``.to(dtype)`` of the source, and no finite value may become ±inf (overflow) and no NaN
    may appear or vanish. Returns ``{"tensors", "bit_exact", "cast", "max_abs_diff"
    (largest finite difference of a cast), "problems"}``; any problem fails the export."""
    from ckpt_inspector.core.formats import open_checkpoint

    written = {key: node.tensor for key, node in
               ((key_of(p), n) for p, n in open_checkpoint(out_path).tensors())}
    problems: list[str] = []
    exact = cast = 0
    max_diff = 0.0
    reference = True
    total = plan.nbytes
    done = 0
    for key, src in plan.items:
        out = written.get(key)
        want = plan.out_dtype(src)
        if out is None:
            problems.append(f"{key}: missing from the output")
            continue
        if out.shape != src.shape or out.dtype != want:
            problems.append(f"{key}: {out.dtype}{list(out.shape)} written, "
                            f"{want}{list(src.shape)} expected")
            continue
        item = dtypes.itemsize(want) or 1
        step = PIECE - PIECE % (item * (src.itemsize or 1))
        if want == src.dtype:
            same = all(a == b for a, b in zip(
                _rechunk(tensor_pieces(src, want), step), _rechunk(tensor_pieces(out, want), step),
                strict=True))
            exact += same
            if not same:
                problems.append(f"{key}: bytes differ from the source")
        else:
            cast += 1
            check = _CastCheck(key, src.dtype, want)
            src_step = step // item * src.itemsize
            for a, b in zip(_rechunk(tensor_pieces(src, src.dtype), src_step),
                            _rechunk(tensor_pieces(out, want), step), strict=True):
                check.add(a, b)
            max_diff = max(max_diff, check.max_diff)
            reference = reference and check.reference
            problems.extend(check.problems())
        done += out.nbytes
        yield Progress("verifying", done, total, key)
    extra = set(written) - {k for k, _ in plan.items}
    if extra:
        problems.append(f"{len(extra)} unexpected tensors in the output")
    result = {"tensors": len(plan.items), "bit_exact": exact, "cast": cast,
              "max_abs_diff": max_diff, "problems": problems}
    if cast and not reference:
        result["cast_reference"] = "torch is not available: casts checked for overflow only"
    return result
