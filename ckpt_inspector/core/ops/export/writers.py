"""Write a plan as a state_dict (``.pt``) or a safetensors file, streaming, then verify.

Plain Python and numpy, no torch: the ``.pt`` archive is written the way
``torch.save`` writes it (a pickle of ``OrderedDict`` + ``_rebuild_tensor_v2``
records, storages as aligned, uncompressed zip records), so
``torch.load(weights_only=True)`` reads it. Output is staged beside the target
(:mod:`ckpt_inspector.core.io.atomic`), verified there, and renamed into place only
when the verification passed; the source file is never written.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import ExportError, ExportUsageError
from ckpt_inspector.core.io.atomic import check_target, staged_file
from ckpt_inspector.core.ops.export.pieces import PIECE, tensor_pieces
from ckpt_inspector.core.ops.export.plan import SAFETENSORS_CODE, Plan
from ckpt_inspector.core.ops.export.verify import torch_load_check, verify_state_dict
from ckpt_inspector.core.progress import Job, Progress

ALIGN = 64  # torch aligns storage records so they can be memory-mapped
_STORAGE_CLASS = {v: k for k, v in dtypes.STORAGE_CLASSES.items() if k != "UntypedStorage"}


def _check_sources(plan: Plan, out_path: str) -> None:
    """Refuse an output that would replace a file the tensors are read from (a shard of a
    checkpoint made of several files: ``check_target`` knows only the path opened)."""
    if not os.path.isfile(out_path):
        return
    files = {span[0] for _k, t in plan.items if t.storage is not None
             and t.storage.source is not None and (span := t.storage.source.file_span())}
    for path in files:
        if os.path.exists(path) and os.path.samefile(path, out_path):
            raise ExportUsageError("the output would replace a file the source is read from "
                                   f"({os.path.basename(path)}): choose another name")


def export_state_dict(plan: Plan, out_path: str, overwrite: bool = False,
                      verify: bool = True) -> Job[dict[str, Any]]:
    """Write the plan to a temporary file, read it back (:func:`verify_state_dict`, and
    ``torch.load(weights_only=True)`` for a ``.pt``), and rename it to ``out_path`` only
    when that passed; yields progress. Returns ``{"path", "bytes" (the file's size),
    "written", "verified", "passed"}`` and, when verified, the figures of the check.
    Without ``verify`` the file is renamed into place unchecked."""
    check_target(out_path, plan.source_path, overwrite)
    _check_sources(plan, out_path)
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



def _write_safetensors(plan: Plan, tmp: str, _stem: str) -> Job[None]:
    yield from write_safetensors(plan, plan.items, tmp, plan.metadata)


def write_safetensors(plan: Plan, items: list[tuple[str, Any]], path: str,
                      metadata: dict[str, str], done: int = 0,
                      total: int | None = None) -> Job[int]:
    """``items`` (output key, tensor) of ``plan`` as one safetensors file at ``path``,
    streamed piece by piece; progress counts from ``done`` towards ``total`` (default: the
    file's tensor bytes). Returns the bytes counted so far."""
    header: dict[str, Any] = {}
    pos = 0
    for key, t in items:
        out = plan.out_dtype(t)
        n = t.numel * (dtypes.itemsize(out) or 1)
        header[key] = {"dtype": SAFETENSORS_CODE[out], "shape": list(t.shape),
                       "data_offsets": [pos, pos + n]}
        pos += n
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    total = done + pos if total is None else total
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, t in items:
            for piece in tensor_pieces(t, plan.out_dtype(t)):
                f.write(piece)
                done += len(piece)
                yield Progress("writing", done, total, key)
    return done


def _write_pt(plan: Plan, tmp: str, stem: str) -> Job[None]:
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

