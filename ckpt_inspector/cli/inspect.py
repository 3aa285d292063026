"""``info``, ``scan`` and ``demo``: what a checkpoint holds and whether it is safe to load."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from ckpt_inspector.cli import _common
from ckpt_inspector.cli._errors import EXIT_NOT_SAFE, EXIT_OK, EXIT_UNREADABLE, fail, unreadable
from ckpt_inspector.core.adapters import find_adapter
from ckpt_inspector.core.adapters.text import adapter_lines
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.gcpause import bulk_allocation
from ckpt_inspector.core.layouts.siblings import whole_model_for
from ckpt_inspector.core.scan import ScanReport, scan
from ckpt_inspector.core.summary import (
    counted,
    format_value,
    human_bytes,
    human_count,
    jsonable,
    shared_storage,
    subtree_totals,
    tensor_json,
    totals,
    value_records,
    with_tensor,
)
from ckpt_inspector.core.tensor_text import tensors_json
from ckpt_inspector.core.torch_load_prediction import predict
from ckpt_inspector.core.tree import Checkpoint, Node, tensors_when_read

NAMES = ("info", "scan", "demo")


def add_parser(sub: Any) -> None:
    info = sub.add_parser("info", help="list a checkpoint's contents (never runs its code)")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sc = sub.add_parser("scan", help="security verdict and findings; exit 0 only when safe")
    sc.add_argument("path")
    sc.add_argument("--json", action="store_true", help="one JSON object on stdout")
    demo = sub.add_parser("demo", help="make the demo checkpoint (needs torch) and print its path")
    demo.add_argument("--info", action="store_true", help="also run info on it")


def run(args: argparse.Namespace) -> int:
    return {"info": cmd_info, "scan": cmd_scan, "demo": cmd_demo}[args.command](args)


# -- info ----------------------------------------------------------------------------------
class Encoded(list):
    """A list of items already encoded as JSON text (one per line in :func:`write_json`)."""


def write_json(obj: dict[str, Any], out: Any) -> None:
    """``obj`` as indented JSON, except that each top-level list holds one item per line,
    compact: Python's indenting encoder is pure Python (13 s for 100,000 tensors), the
    compact one is C. An :class:`Encoded` list's items are written as they are."""
    out.write("{\n")
    items = list(obj.items())
    for i, (key, value) in enumerate(items):
        out.write(f" {json.dumps(key)}: ")
        if isinstance(value, list) and value:
            lines = value if isinstance(value, Encoded) else map(json.dumps, value)
            out.write("[\n  ")  # not one string: the tensors' text is 10s of MB
            out.write(",\n  ".join(lines))
            out.write("\n ]")
        else:
            out.write(json.dumps(value, indent=1).replace("\n", "\n "))
        out.write(",\n" if i < len(items) - 1 else "\n")
    out.write("}\n")


def info_json(ckpt: Checkpoint) -> dict[str, Any]:
    """What ``info --json`` prints; its ``tensors`` and ``arrays`` are :class:`Encoded`
    (``json.loads`` each item for the record)."""
    report = scan(ckpt)
    pairs = with_tensor(ckpt.root)
    plain = [(p, n) for p, n in pairs if n.kind == "tensor"]
    shared = shared_storage(ckpt, plain)
    cache: dict[tuple[Any, ...], tuple[str, str]] = {}  # what tensors have in common
    if len(plain) == len(pairs):
        tensors, arrays = Encoded(tensors_json(pairs, shared)), Encoded()
    else:
        tensors, arrays = Encoded(), Encoded()
        for path, node in pairs:
            (tensors if node.kind == "tensor" else arrays).append(
                tensor_json(path, node, shared, cache))
    tot = totals(ckpt, [n for _p, n in plain])
    out: dict[str, Any] = {
        "path": ckpt.path,
        "format": ckpt.format,
        "file_size": ckpt.file_size,
        "verdict": report.verdict,
        "globals": report.globals,
        "tensors": tensors,
        "totals": tot,
        "values": value_records(ckpt),
        "metadata": {k: jsonable(v, 10_000) for k, v in ckpt.metadata.items()},
        "warnings": ckpt.warnings,
        "torch_load": predict(ckpt, report, devices=tot["devices"]).to_json(),
    }
    if arrays:
        out["arrays"] = arrays
    if ckpt.files:  # a checkpoint made of several files
        out["files"] = ckpt.files
    if ckpt.verdict_files:  # and those its loaders torch.load too, not shown
        out["verdict_files"] = ckpt.verdict_files
    _adapter_json(ckpt, out)
    return out


def _adapter_json(ckpt: Checkpoint, out: dict[str, Any]) -> None:
    """``adapter``: the LoRA pairs of an adapter (core/adapters), when it has some."""
    adapter = find_adapter(ckpt)
    if adapter is not None:
        out["adapter"] = adapter.to_json()


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _leaf_text(node: Node) -> str:
    if node.kind == "tensor" or (node.kind == "ndarray" and node.tensor is not None):
        t = node.tensor
        parts = [t.dtype, _shape(t.shape), human_bytes(t.nbytes), t.device] \
            if t.shape_known else [t.dtype, "shape unknown", t.device]
        if node.role and node.role != "parameter":
            parts.append(node.role)
        if t.quantization:
            parts.append(t.quantization["scheme"])
        if t.problem:
            parts.append(f"DAMAGED: {t.problem}")
        return "  ".join(parts)
    if node.kind in ("scalar", "str", "value", "none", "bytes") or node.value is not None:
        return format_value(node)
    return node.note or node.type_name


def _container_text(node: Node, sums: dict[int, tuple[int, int, int]]) -> str:
    count, numel, nbytes = sums[id(node)]
    label = node.type_name or node.kind
    if node.kind == "module":
        label = f"{label} (module)"
    if count:
        return (f"{label} · {counted(count, 'tensor')} · "
                f"{human_count(numel)} elements · {human_bytes(nbytes)}")
    return f"{label} · {counted(len(node.children), 'item')}"


def render_tree(node: Node, sums: dict[int, tuple[int, int, int]],
                prefix: str = "") -> Iterator[str]:
    """Box-drawn lines for a node's children (the tree's depth is bounded by the reader)."""
    kids = node.children
    width = min(max((len(str(k.key)) for k in kids), default=0), 48)
    for i, child in enumerate(kids):
        last = i == len(kids) - 1
        branch = "└─ " if last else "├─ "
        key = str(child.key)
        if child.is_container and child.children:
            yield f"{prefix}{branch}{key}  {_container_text(child, sums)}"
            yield from render_tree(child, sums, prefix + ("   " if last else "│  "))
        else:
            text = _leaf_text(child) if child.value is not None or not child.is_container \
                else _container_text(child, sums)
            yield f"{prefix}{branch}{key.ljust(width)}  {text}"


def print_info(ckpt: Checkpoint) -> None:
    report = scan(ckpt)
    tot = totals(ckpt)
    print(ckpt.path)
    print(f"  format   {ckpt.format} ({human_bytes(ckpt.file_size)})")
    flagged = report.flagged_names()
    more = f" and {len(flagged) - 5} more" if len(flagged) > 5 else ""
    print(f"  verdict  {report.verdict}"
          + (f" — imports {', '.join(flagged[:5])}{more}" if flagged else ""))
    dtypes_text = ", ".join(f"{d} {v['tensors']}" for d, v in tot["by_dtype"].items())
    lost = tot["damaged_tensors"]
    print(f"  tensors  {tot['tensors']:,} · {tot['numel']:,} elements · "
          f"{human_bytes(tot['nbytes'])}" + (f" ({dtypes_text})" if dtypes_text else "")
          + (f" · {lost:,} cannot be read" if lost else ""))
    if tot["devices"]:
        print("  devices  " + ", ".join(f"{d} ({n})" for d, n in tot["devices"].items()))
    if tot["tensors"]:
        print("  memory   " + memory_text(tot["memory"]))
    for k, v in ckpt.metadata.items():
        if k in ("code files", "operators", "doc_string"):
            v = f"{len(v)} entries" if isinstance(v, (list, dict)) else str(v)[:60] + "…"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v)
        text = str(v)
        print(f"  {k}: {text if len(text) <= 200 else text[:200] + '…'}")
    _print_adapter(ckpt)
    _print_files(ckpt)
    print()
    root = ckpt.root
    if root.is_container:
        sums = subtree_totals(root)
        print(_container_text(root, sums))
        for line in render_tree(root, sums):
            print(line)
    else:
        print(_leaf_text(root))
    for w in ckpt.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if tot["damaged_tensors"]:
        print(f"warning: {counted(tot['damaged_tensors'], 'tensor')} damaged; see DAMAGED "
              "above" + _unknown_shapes(tot), file=sys.stderr)


def memory_text(mem: dict[str, Any]) -> str:
    """The tensors' memory in a line: as saved, as float16/bfloat16, and a training
    checkpoint's weights and optimizer state."""
    text = (f"{human_bytes(mem['saved'])} as saved · {human_bytes(mem['float16'])} as "
            "float16/bfloat16")
    opt = mem.get("optimizer")
    if opt is not None:
        text += (f" · weights {human_bytes(mem['weights']['saved'])}, optimizer state "
                 f"{human_bytes(opt['saved'])} ({mem.get('optimizer_share', 0):.0%})")
    return text


def _unknown_shapes(tot: dict[str, Any]) -> str:
    n = tot.get("unknown_shape_tensors", 0)
    return (f" ({n:,} of unknown shape, not counted in the elements and bytes)" if n else "")


def _print_adapter(ckpt: Checkpoint) -> None:
    """The adapter section of a LoRA adapter (core/adapters)."""
    adapter = find_adapter(ckpt)
    if adapter is not None:
        for line in adapter_lines(adapter):
            print(line)


def _print_files(ckpt: Checkpoint) -> None:
    """The files of a checkpoint made of several files."""
    if not ckpt.files:
        return
    print(f"  files    {len(ckpt.files):,}")
    for f in ckpt.files[:50]:
        what = f.get("problem") or f["format"] or "?"
        print(f"    {f['path']}  {human_bytes(f['size'])}  {what}")
    if len(ckpt.files) > 50:
        print(f"    … and {len(ckpt.files) - 50:,} more (info --json lists them)")
    if ckpt.verdict_files:
        print(f"  also read for the verdict, not shown: {len(ckpt.verdict_files):,}")
        for f in ckpt.verdict_files[:10]:
            what = f.get("problem") or f["format"] or "?"
            size = human_bytes(f["size"]) if f.get("size") is not None else "?"
            print(f"    {f['path']}  {size}  {what}")
        if len(ckpt.verdict_files) > 10:
            print(f"    … and {len(ckpt.verdict_files) - 10:,} more (info --json lists "
                  "them)")


def cmd_info(args: argparse.Namespace) -> int:
    try:
        ckpt = _common.open_file(args.path)
    except CheckpointError as err:
        return unreadable(args.path, err)
    if args.json:
        with bulk_allocation():  # 100,000s of records: keep the collector out
            doc = info_json(ckpt)
            write_json(doc, sys.stdout)
        damaged = doc["totals"]["damaged_tensors"]
        if damaged:
            print(f"ckpt-inspector: {args.path}: {counted(damaged, 'damaged tensor')} listed "
                  "with their problem" + _unknown_shapes(doc["totals"]), file=sys.stderr)
    else:
        print_info(ckpt)
        whole = whole_model_for(args.path)
        if whole is not None:  # one shard: say where the rest is (the text, not --json)
            print(f"note: {os.path.basename(args.path)} is {whole.describe()}; "
                  f"'ckpt-inspector info {whole.path}' reads all of it", file=sys.stderr)
    return EXIT_OK


# -- scan ----------------------------------------------------------------------------------
def scan_json(path: str, ckpt: Checkpoint | None, report: ScanReport,
              error: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "path": path,
        "format": ckpt.format if ckpt else None,
        "verdict": report.verdict,
        "globals": report.globals,
        "findings": [f.to_json() for f in report.findings],
        "readable": error is None and not report.unscanned,  # read whole, every file
    }
    if report.unscanned:  # files not scanned: a "safe" verdict is incomplete
        out["unscanned"] = report.unscanned
    if error:
        out["error"] = error
    if ckpt is not None:
        out["torch_load"] = predict(ckpt, report, error).to_json()
    return out


def cmd_scan(args: argparse.Namespace) -> int:
    error = None
    token = tensors_when_read.set(True)  # the verdict reads no TensorInfo: none is made
    try:
        ckpt: Checkpoint | None = _common.open_file(args.path)
    except CheckpointError as err:
        ckpt = err.partial
        error = str(err)
        if ckpt is None:  # nothing identified: not even a verdict to give
            return unreadable(args.path, err)
    finally:
        tensors_when_read.reset(token)
    assert ckpt is not None
    report = scan(ckpt, error)
    code, failure = _scan_failure(report, error)
    if args.json:
        doc = scan_json(args.path, ckpt, report, error)
        if failure:  # the one answer says it too
            doc.setdefault("error", failure)
            doc["exit_code"] = code
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        unscanned = report.unscanned
        print(f"{args.path}: {report.verdict}" + (
            f" (incomplete: {counted(len(unscanned), 'file')} not scanned)" if unscanned
            else ""))
        for f in report.findings:
            where = " ".join(x for x in (f.file and f"file {f.file}",
                                         f.member and f"in {f.member}",
                                         f.offset is not None and f"at byte {f.offset}") if x)
            print(f"  [{f.severity}] {f.message}" + (f" ({where})" if where else ""))
        if report.globals:
            print("  imports: " + ", ".join(report.globals))
        for line in predict(ckpt, report, error).lines():
            print(f"  {line}")
    if failure:
        return fail(f"{args.path}: {failure}", code, args.path)
    return EXIT_OK if report.verdict == "safe" else EXIT_NOT_SAFE


def _scan_failure(report: ScanReport, error: str | None) -> tuple[int, str]:
    """The exit status and the problem of a scan that could not read everything; (0, "")
    when it read all of it (the verdict decides)."""
    if error:
        # what was read before the failure already shows a payload: that is the answer
        # (a file torch would run is never just "unreadable"); else exit 3 as unreadable
        if any(f.severity == "dangerous" and f.code != "malformed" for f in report.findings):
            return EXIT_NOT_SAFE, f"{error} (verdict from what was read: {report.verdict})"
        return EXIT_UNREADABLE, f"{error} (verdict: {report.verdict})"
    if report.verdict == "safe" and report.unscanned:
        # what was read is safe, but not all of it could be read: not a clean exit 0
        missing = report.unscanned
        return EXIT_UNREADABLE, (
            f"{counted(len(missing), 'file')} not scanned ({', '.join(missing[:3])}"
            f"{', …' if len(missing) > 3 else ''}): the verdict safe covers only the rest")
    return EXIT_OK, ""


def cmd_demo(args: argparse.Namespace) -> int:
    from ckpt_inspector.demo import demo_checkpoint

    path = demo_checkpoint()
    print(path)
    if args.info:
        print()
        print_info(_common.open_file(str(path)))
    return EXIT_OK

