"""A plan written as a Hugging Face sharded model: ``model-0000K-of-0000N.safetensors``
and ``model.safetensors.index.json`` in a folder (or ``model.safetensors`` alone when one
shard holds everything), as ``huggingface_hub.save_torch_state_dict`` writes it.

The split is ``huggingface_hub``'s (``split_state_dict_into_shards_factory``): tensors in
order, a shard closed when the next tensor would take it past the maximum, a tensor larger
than the maximum alone in a shard of its own (placed before the shard being filled), sizes
in decimal units (``5GB`` = 5·10⁹ bytes). Every tensor is written whole in its own bytes
(as the safetensors target writes it), so no two share storage and each counts its own
size; ``metadata.total_size`` is their sum. Shards carry ``{"format": "pt"}``; the user's
metadata goes into the index (or the one file, unsharded), as huggingface_hub puts it.

The folder is staged beside the target, read back through the ``hf-sharded`` layout
reader (the index must match the shards, every tensor compared with its source) and
renamed into place only when that passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import ExportUsageError
from ckpt_inspector.core.io.atomic import staged_folder, temp_folder
from ckpt_inspector.core.ops.export.plan import Plan
from ckpt_inspector.core.progress import Job
from ckpt_inspector.core.tree import TensorInfo

MAX_SHARD_SIZE = 5 * 10**9  # huggingface_hub's default, "5GB"
_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}
_PATTERN = "model{suffix}.safetensors"
INDEX = "model.safetensors.index.json"
_MISMATCH = ("index-mismatch", "duplicate-key", "not-a-state-dict")
_OURS = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")


def parse_size(text: str | int) -> int:
    """``5GB``, ``500MB``, ``1.5GB`` (decimal units, as huggingface_hub's
    ``parse_size_to_int``) or a number of bytes; :class:`ExportUsageError` otherwise."""
    if isinstance(text, int):
        value = text
    else:
        raw = text.strip().replace("_", "")
        try:
            if raw[-2:].upper() in _UNITS:
                value = int(float(raw[:-2].strip()) * _UNITS[raw[-2:].upper()])
            else:
                value = int(raw)
        except (ValueError, IndexError, OverflowError):
            raise ExportUsageError(f"--max-shard-size takes bytes or a size such as 5GB, "
                                   f"500MB (KB, MB, GB, TB), not {text!r}") from None
    if value < 1:
        raise ExportUsageError(f"--max-shard-size must be at least 1 byte, not {text!r}")
    return value


def size_of(plan: Plan, t: TensorInfo) -> int:
    return t.numel * (dtypes.itemsize(plan.out_dtype(t)) or 1)


def split(plan: Plan, max_size: int) -> list[list[tuple[str, TensorInfo]]]:
    """The shards, as huggingface_hub's greedy rule makes them (see the module)."""
    shards: list[list[tuple[str, TensorInfo]]] = []
    current: list[tuple[str, TensorInfo]] = []
    current_size = 0
    for key, t in plan.items:
        n = size_of(plan, t)
        if n > max_size:
            shards.append([(key, t)])
            continue
        if current_size + n > max_size:
            shards.append(current)
            current, current_size = [], 0
        current.append((key, t))
        current_size += n
    if current:
        shards.append(current)
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [_PATTERN.format(suffix="")]
    return [_PATTERN.format(suffix=f"-{i:05d}-of-{count:05d}") for i in range(1, count + 1)]


# -- the target folder -----------------------------------------------------------------------
def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_folder(plan: Plan, out_dir: str, overwrite: bool) -> None:
    """Refuse a target that is a file, in a folder that does not exist, holds the source,
    or already holds anything but a sharded model's own files (or those without
    ``overwrite``)."""
    out = os.path.abspath(out_dir)
    if not out_dir or os.path.basename(out) in (".", ".."):
        raise ExportUsageError(f"{out_dir!r}: give the folder to write")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ExportUsageError(f"folder {parent} does not exist")
    files = {span[0] for _k, t in plan.items if t.storage is not None
             and t.storage.source is not None and (span := t.storage.source.file_span())}
    if any(_inside(p, out) for p in [plan.source_path, *files] if p and os.path.exists(p)):
        raise ExportUsageError("the output folder would replace the source or hold it: "
                               "choose another folder")
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or os.path.islink(out):
        raise ExportUsageError(f"{out} exists and is not a folder")
    names = os.listdir(out)
    if names and not overwrite:
        raise ExportUsageError(f"{out} is not empty (overwrite it explicitly)")
    others = [n for n in names if not _OURS.fullmatch(n)]
    if others:
        raise ExportUsageError(f"{out} holds other files than a sharded model's ({others[0]}"
                               f"{', …' if len(others) > 1 else ''}): choose a new folder")


def _commit(staged: str, out: str) -> None:
    """Move the staged folder into place: a rename over a missing or empty folder, or the
    old one set aside, the new one renamed in, the old one removed."""
    if not os.path.isdir(out) or not os.listdir(out):
        os.replace(staged, out)
        return
    old = temp_folder(out)
    os.replace(out, old)
    try:
        os.replace(staged, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- writing -----------------------------------------------------------------------------------
def export_sharded(plan: Plan, out_dir: str, max_size: int | None = None,
                   overwrite: bool = False, verify: bool = True) -> Job[dict[str, Any]]:
    """Write the plan as a sharded model in ``out_dir`` (staged, read back, then renamed);
    yields progress. Returns what :func:`~.writers.export_state_dict` returns, and
    ``files`` (the file names, index last) and ``max_shard_size``."""
    from ckpt_inspector.core.layouts import hf_sharded
    from ckpt_inspector.core.ops.export.verify import verify_tensors
    from ckpt_inspector.core.ops.export.writers import write_safetensors

    max_size = MAX_SHARD_SIZE if max_size is None else max_size
    check_folder(plan, out_dir, overwrite)
    shards = split(plan, max_size)
    names = shard_names(len(shards))
    total = sum(size_of(plan, t) for _k, t in plan.items)
    out = os.path.abspath(out_dir)
    result: dict[str, Any] = {"path": out, "verified": verify, "max_shard_size": max_size}
    oversized = sum(1 for _k, t in plan.items if size_of(plan, t) > max_size)
    if oversized:  # each in a shard of its own, larger than the limit (as huggingface_hub)
        result["oversized"] = oversized
    with staged_folder(out) as work:
        done = 0
        for name, items in zip(names, shards):
            meta = {"format": "pt", **(plan.metadata if len(shards) == 1 else {})}
            done = yield from write_safetensors(plan, items, os.path.join(work, name), meta,
                                                done, total)
        files = list(names)
        if len(shards) > 1:
            index = {"metadata": {"total_size": total, **plan.metadata},
                     "weight_map": {k: n for n, items in zip(names, shards) for k, _t in items}}
            with open(os.path.join(work, INDEX), "w") as f:
                json.dump(index, f, indent=2)
            files.append(INDEX)
        result["files"] = files
        result["bytes"] = sum(os.path.getsize(os.path.join(work, n)) for n in files)
        passed = True
        if verify:
            opened = hf_sharded.open(work)
            problems = list(opened.warnings) + [
                f"{f.file}: {f.message}" if f.file else f.message for f in opened.findings
                if f.severity != "info" or f.code in _MISMATCH]
            check = yield from verify_tensors(plan, opened)
            check["problems"] = problems + check["problems"]
            result.update(check)
            passed = not check["problems"]
        result["passed"] = passed
        result["written"] = False
        if passed:
            _commit(work, out)
            result["written"] = True
    if result["written"]:
        with contextlib.suppress(OSError):
            os.chmod(out, 0o777 & ~_umask())
    return result


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
