"""Command line: ``ckpt-inspector [FILES...]``, ``info``, ``scan``.

Exit codes: 0 ok / safe, 1 not safe (``export``: failed or not verified), 2 usage,
3 unreadable input (one line on stderr naming the file and the problem, never a
traceback), 130 / 143 after Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from ckpt_inspector import __version__
from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.gcpause import bulk_allocation
from ckpt_inspector.core.scan import ScanReport, scan
from ckpt_inspector.core.summary import (
    format_value,
    human_bytes,
    human_count,
    jsonable,
    shared_storage,
    subtree_totals,
    tensor_record,
    totals,
    value_records,
)
from ckpt_inspector.core.tree import Checkpoint, Node

EXIT_OK, EXIT_NOT_SAFE, EXIT_USAGE, EXIT_UNREADABLE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2, as argparse does
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ckpt-inspector",
                description="Open PyTorch checkpoints safely and see what is inside.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="list a checkpoint's contents (never runs its code)")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sc = sub.add_parser("scan", help="security verdict and findings; exit 0 only when safe")
    sc.add_argument("path")
    sc.add_argument("--json", action="store_true", help="one JSON object on stdout")
    demo = sub.add_parser("demo", help="make the demo checkpoint (needs torch) and print its path")
    demo.add_argument("--info", action="store_true", help="also run info on it")
    load = sub.add_parser(
        "load", help="load a file you trust with torch onto a device and report what came back",
        description="Weights-only for safe files; torch.nn/torchvision classes allowed by name "
                    "for needs-trust files that import only those; anything else runs the "
                    "file's code and takes --run-code (dangerous files also --allow-dangerous).")
    load.add_argument("path")
    load.add_argument("--device", default="cpu", help="map_location (cpu, cuda:0, mps)")
    load.add_argument("--run-code", action="store_true",
                      help="allow torch.load(weights_only=False) / torch.jit.load")
    load.add_argument("--allow-dangerous", action="store_true",
                      help="with --run-code: load even a file judged dangerous")
    load.add_argument("--json", action="store_true", help="one JSON object on stdout")
    _export_parser(sub)
    ar = sub.add_parser("arch", help="which torchvision architecture a state_dict fits")
    ar.add_argument("path")
    ar.add_argument("--key", help="the part holding the state_dict (default: best guess)")
    ar.add_argument("--strip-prefix", action="append", default=[], metavar="P")
    ar.add_argument("--json", action="store_true")
    st = sub.add_parser("stats", help="statistics of tensors (and histograms), read in chunks")
    st.add_argument("path")
    st.add_argument("keys", nargs="*", metavar="KEY", help="tensors to describe (default: all)")
    st.add_argument("--device", default="cpu",
                    help="where the arithmetic runs: cpu (numpy) or a torch device (cuda:0)")
    st.add_argument("--bins", type=int, default=0, metavar="N",
                    help="also a histogram of N bins (exact up to 64M elements, else sampled)")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")
    st.add_argument("--progress", action="store_true",
                    help="JSON lines of progress on stdout, then the result")
    df = sub.add_parser(
        "diff", help="compare two checkpoints: keys, shapes, dtypes and values",
        description="Exit 0 when identical, 1 when different, 3 when a file (or a tensor's "
                    "data) cannot be read. "
                    "Keys are matched exactly or, when it matches more of them, after "
                    "stripping a prefix found automatically (module., model., ...).")
    df.add_argument("a", metavar="A")
    df.add_argument("b", metavar="B")
    df.add_argument("--strip-prefix", action="append", default=[], metavar="P",
                    help="strip P (ending at a key segment: 'module' means 'module.') from "
                         "the keys of both files where they start with it; given rules "
                         "replace the automatic search")
    df.add_argument("--strip-prefix-a", action="append", default=[], metavar="P",
                    help="strip P from A's keys only")
    df.add_argument("--strip-prefix-b", action="append", default=[], metavar="P",
                    help="strip P from B's keys only")
    df.add_argument("--exact", action="store_true",
                    help="match keys exactly (no prefix found automatically)")
    df.add_argument("--key-a", metavar="KEY", help="compare only this part of A "
                    "(e.g. model_state_dict)")
    df.add_argument("--key-b", metavar="KEY", help="compare only this part of B")
    df.add_argument("--all", action="store_true", help="list every key, identical ones too")
    df.add_argument("--json", action="store_true", help="one JSON object on stdout")
    df.add_argument("--progress", action="store_true",
                    help="JSON lines of progress on stdout, then the result")
    dev = sub.add_parser("devices", help="devices torch can load tensors onto (map_location)")
    dev.add_argument("--json", action="store_true", help="one JSON list on stdout")
    return p


def _unreadable(path: str, err: BaseException) -> int:
    sys.stdout.flush()
    msg = str(err) or type(err).__name__
    print(f"ckpt-inspector: {path}: {msg}", file=sys.stderr)
    return EXIT_UNREADABLE


def _open(path: str) -> Checkpoint:
    try:
        with bulk_allocation():
            return open_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as err:  # a reader bug must still end in one clear line
        raise CheckpointError(f"unexpected {type(err).__name__} while reading: {err}") from err


# -- info ----------------------------------------------------------------------------------
def write_json(obj: dict[str, Any], out: Any) -> None:
    """``obj`` as indented JSON, except that each top-level list holds one item per line,
    compact: Python's indenting encoder is pure Python (13 s for 100,000 tensors), the
    compact one is C."""
    out.write("{\n")
    items = list(obj.items())
    for i, (key, value) in enumerate(items):
        out.write(f" {json.dumps(key)}: ")
        if isinstance(value, list) and value:
            out.write("[\n")
            last = len(value) - 1
            for j, v in enumerate(value):
                out.write("  " + json.dumps(v) + (",\n" if j < last else "\n ]"))
        else:
            out.write(json.dumps(value, indent=1).replace("\n", "\n "))
        out.write(",\n" if i < len(items) - 1 else "\n")
    out.write("}\n")


def info_json(ckpt: Checkpoint) -> dict[str, Any]:
    report = scan(ckpt)
    shared = shared_storage(ckpt)
    tensors, arrays = [], []
    for node in ckpt.root.walk():
        if node.tensor is None:
            continue
        rec = tensor_record(node.path(), node, shared)
        (tensors if node.kind == "tensor" else arrays).append(rec)
    out: dict[str, Any] = {
        "path": ckpt.path,
        "format": ckpt.format,
        "file_size": ckpt.file_size,
        "verdict": report.verdict,
        "globals": report.globals,
        "tensors": tensors,
        "totals": totals(ckpt),
        "values": value_records(ckpt),
        "metadata": {k: jsonable(v, 10_000) for k, v in ckpt.metadata.items()},
        "warnings": ckpt.warnings,
    }
    if arrays:
        out["arrays"] = arrays
    return out


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _leaf_text(node: Node) -> str:
    if node.kind == "tensor" or (node.kind == "ndarray" and node.tensor is not None):
        t = node.tensor
        parts = [t.dtype, _shape(t.shape), human_bytes(t.nbytes), t.device]
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
        return (f"{label} · {count} tensor{'s' if count != 1 else ''} · "
                f"{human_count(numel)} elements · {human_bytes(nbytes)}")
    return f"{label} · {len(node.children)} item{'s' if len(node.children) != 1 else ''}"


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
    print(f"  tensors  {tot['tensors']:,} · {tot['numel']:,} elements · "
          f"{human_bytes(tot['nbytes'])}" + (f" ({dtypes_text})" if dtypes_text else ""))
    if tot["devices"]:
        print("  devices  " + ", ".join(f"{d} ({n})" for d, n in tot["devices"].items()))
    for k, v in ckpt.metadata.items():
        if k in ("code files", "operators", "doc_string"):
            v = f"{len(v)} entries" if isinstance(v, (list, dict)) else str(v)[:60] + "…"
        elif isinstance(v, (dict, list)):
            v = json.dumps(v)
        text = str(v)
        print(f"  {k}: {text if len(text) <= 200 else text[:200] + '…'}")
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
        print(f"warning: {tot['damaged_tensors']} tensor(s) are damaged; see DAMAGED above",
              file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> int:
    try:
        ckpt = _open(args.path)
    except CheckpointError as err:
        return _unreadable(args.path, err)
    if args.json:
        write_json(info_json(ckpt), sys.stdout)
        damaged = totals(ckpt)["damaged_tensors"]
        if damaged:
            print(f"ckpt-inspector: {args.path}: {damaged} damaged tensor(s) listed with "
                  "their problem", file=sys.stderr)
    else:
        print_info(ckpt)
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
        "readable": error is None,
    }
    if error:
        out["error"] = error
    return out


def cmd_scan(args: argparse.Namespace) -> int:
    error = None
    try:
        ckpt: Checkpoint | None = _open(args.path)
    except CheckpointError as err:
        ckpt = err.partial
        error = str(err)
        if ckpt is None:  # nothing identified: not even a verdict to give
            return _unreadable(args.path, err)
    assert ckpt is not None
    report = scan(ckpt, error)
    if args.json:
        json.dump(scan_json(args.path, ckpt, report, error), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"{args.path}: {report.verdict}")
        for f in report.findings:
            where = " ".join(x for x in (f.member and f"in {f.member}",
                                         f.offset is not None and f"at byte {f.offset}") if x)
            print(f"  [{f.severity}] {f.message}" + (f" ({where})" if where else ""))
        if report.globals:
            print("  imports: " + ", ".join(report.globals))
    if error:
        # what was read before the failure already shows a payload: that is the answer
        # (a file torch would run is never just "unreadable"); else exit 3 as unreadable
        if any(f.severity == "dangerous" and f.code != "malformed" for f in report.findings):
            print(f"ckpt-inspector: {args.path}: {error} (verdict from what was read: "
                  f"{report.verdict})", file=sys.stderr)
            return EXIT_NOT_SAFE
        return _unreadable(args.path, CheckpointError(f"{error} (verdict: {report.verdict})"))
    return EXIT_OK if report.verdict == "safe" else EXIT_NOT_SAFE


def cmd_demo(args: argparse.Namespace) -> int:
    from ckpt_inspector.demo import demo_checkpoint

    path = demo_checkpoint()
    print(path)
    if args.info:
        print()
        print_info(_open(str(path)))
    return EXIT_OK


def cmd_devices(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.devices import list_devices

    devices = list_devices()
    if args.json:
        print(json.dumps(devices))
    else:
        for d in devices:
            print(d["label"])
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops.stats import compute, format_number, histogram
    from ckpt_inspector.core.tree import key_of

    if args.bins < 0 or args.bins > 10_000:
        print("ckpt-inspector: --bins must be between 1 and 10000", file=sys.stderr)
        return EXIT_USAGE
    if args.device != "cpu":
        try:
            import torch

            torch.empty(1, device=args.device)
        except Exception as err:  # no torch, no such device
            print(f"ckpt-inspector: device {args.device} is not available: {err}",
                  file=sys.stderr)
            return EXIT_USAGE
    try:
        ckpt = _open(args.path)
    except CheckpointError as err:
        return _unreadable(args.path, err)
    found = {key_of(p): node.tensor for p, node in ckpt.tensors() if node.tensor is not None}
    missing = [k for k in args.keys if k not in found]
    if missing:
        print(f"ckpt-inspector: {args.path}: no tensor {missing[0]!r}", file=sys.stderr)
        return EXIT_USAGE
    keys = args.keys or list(found)
    report: dict[str, Any] = {}
    for key in keys:
        info = found[key]
        try:
            st = _drive(compute(info, args.device), args.progress)
            entry: dict[str, Any] = {"shape": list(info.shape), **st.to_json()}
            if args.bins and st.min is not None:
                h = _drive(histogram(info, st, args.bins), args.progress)
                entry["histogram"] = {"edges": h.edges.tolist(), "counts": h.counts.tolist(),
                                      "sampled": h.sampled}
        except CheckpointError as err:
            entry = {"shape": list(info.shape), "dtype": info.dtype, "error": str(err)}
        report[key] = entry
    if args.json or args.progress:
        print(json.dumps({"path": args.path, "device": args.device, "tensors": report}))
        return EXIT_OK
    width = min(max((len(k) for k in keys), default=3), 48)
    print(f"{'key':{width}s}  {'dtype':9s} {'min':>11s} {'max':>11s} {'mean':>11s} "
          f"{'std':>11s} {'zeros':>7s}  nan/inf")
    for key, e in report.items():
        if "error" in e:
            print(f"{key:{width}s}  {e['dtype']:9s} {e['error']}")
            continue
        nums = " ".join(f"{format_number(e[f]):>11s}"
                        for f in ("min", "max", "mean", "std"))
        bad = e["nan"] + e["posinf"] + e["neginf"]
        print(f"{key:{width}s}  {e['dtype']:9s} {nums} {e['sparsity']:7.1%}  "
              f"{bad:,}" + (f"  ({e['note']})" if e["note"] else ""))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops import diff as d

    rules = [d.PrefixRule(p, side) for side, given in
             (("both", args.strip_prefix), ("a", args.strip_prefix_a), ("b", args.strip_prefix_b))
             for p in given]
    opened = []
    for path in (args.a, args.b):
        try:
            opened.append(_open(path))
        except CheckpointError as err:
            return _unreadable(path, err)
    try:
        result = _drive(d.diff(*opened, rules=rules, key_a=args.key_a, key_b=args.key_b,
                               auto=not args.exact), args.progress)
    except KeyError as err:
        side = "A" if args.key_a and err.args[0] == args.key_a else "B"
        print(f"ckpt-inspector: {side} has no key {err.args[0]!r}", file=sys.stderr)
        return EXIT_USAGE
    unreadable = sum(1 for e in result.entries if e.status == d.UNREADABLE)
    code = EXIT_OK if result.identical else EXIT_UNREADABLE if unreadable else EXIT_NOT_SAFE
    try:
        if args.json or args.progress:
            print(json.dumps(result.to_json()))
        else:
            print_diff(result, opened, args.all)
        sys.stdout.flush()
    except BrokenPipeError:  # piped into head: the answer is still the exit status
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if unreadable:
        print(f"ckpt-inspector: {unreadable:,} tensor(s) could not be read, so the files "
              "cannot be called identical or different there", file=sys.stderr)
    return code


def print_diff(result: Any, opened: list[Checkpoint], everything: bool) -> None:
    from ckpt_inspector.core.ops import diff as d

    for name, ckpt in zip("AB", opened, strict=True):
        t = totals(ckpt)
        print(f"{name}  {ckpt.path}  ({ckpt.format}, {t['tensors']:,} tensors, "
              f"{human_count(t['numel'])} elements, {human_bytes(t['nbytes'])})")
    if result.rules:
        how = "found automatically; --exact turns it off" if result.auto_rule else "as asked"
        print("keys matched with " + "; ".join(r.describe() for r in result.rules)
              + f" ({how})")
    counts = result.counts()
    summary = ", ".join(f"{n:,} {s}" for s, n in counts.items() if n)
    if result.identical:
        print(f"\nIDENTICAL: {summary or 'both empty'}")
        if not everything:
            return
    else:
        print(f"\nDIFFERENT: {summary}; {result.params_changed():,} of "
              f"{result.params_compared():,} shared elements are in tensors that differ")
    largest = result.largest()
    listed = sum(1 for e in result.entries if e.status in (d.CHANGED, d.DTYPE))
    if largest and listed > len(largest):  # else the lists below say it all, in this order
        print("\nlargest changes (relative L2 difference, ||A−B|| / max(||A||, ||B||)):")
        width = min(max(len(e.key) for e in largest), 60)
        for e in largest:
            print(f"  {e.key:{width}s}  {d.describe_numbers(e.numbers)}")
    width = min(max((len(e.key) for e in result.entries
                     if everything or e.status != d.IDENTICAL), default=3), 60)
    for status in d.STATUSES:
        entries = [e for e in result.entries if e.status == status]
        if not entries or (status == d.IDENTICAL and not everything):
            continue
        if status in (d.CHANGED, d.DTYPE):
            entries.sort(key=lambda e: (-e.score(), e.key))
        print(f"\n{status} ({len(entries):,}):")
        shown = entries if everything else entries[:50]
        for e in shown:
            print(f"  {e.key or '(the part chosen)':{width}s}  {_diff_line(e)}")
        if len(shown) < len(entries):
            print(f"  … and {len(entries) - len(shown):,} more (--all lists them)")


def _diff_line(e: Any) -> str:
    from ckpt_inspector.core.ops import diff as d

    a = e.a.describe() if e.a else ""
    b = e.b.describe() if e.b else ""
    if e.status == d.ONLY_A:
        return a
    if e.status == d.ONLY_B:
        return b
    if e.status == d.UNREADABLE:
        return f"{a}: {e.error}"
    if e.status == d.IDENTICAL:
        return a
    if e.numbers is not None:
        text = d.describe_numbers(e.numbers)
        return f"{a} → {b}: {text}" if a != b else f"{a}: {text}"
    return f"{a} → {b}"


def cmd_load(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.ops.torch_load import TrustError, trusted_load

    if args.allow_dangerous and not args.run_code:
        print("ckpt-inspector: --allow-dangerous needs --run-code too", file=sys.stderr)
        return EXIT_USAGE
    try:
        with bulk_allocation():
            loaded = trusted_load(args.path, args.device, run_code=args.run_code,
                                  allow_dangerous=args.allow_dangerous)
    except TrustError as err:
        print(f"ckpt-inspector: {args.path}: not loaded: {err}", file=sys.stderr)
        return EXIT_NOT_SAFE
    except CheckpointError as err:
        return _unreadable(args.path, err)
    except Exception as err:  # torch's own message is the useful one
        return _unreadable(args.path, CheckpointError(f"torch refused it: {err}"))
    result = loaded.describe()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.path}: {result['type']}, {result['tensors']:,} tensors, "
              f"{human_bytes(result['nbytes'])} on {', '.join(result['devices']) or args.device}"
              f" in {result['seconds']:.2f} s ({result['mode']})")
    return EXIT_OK


def _export_parser(sub: Any) -> None:
    ex = sub.add_parser(
        "export", help="export to a state_dict, safetensors, TorchScript, ONNX or .pt2, verified",
        description="State_dict and safetensors exports read tensors from the file (no torch "
                    "load); TorchScript, ONNX and .pt2 need a model: the file's own (with "
                    "--trust), a torchvision architecture matched to its state_dict (--arch), "
                    "or your builder (--builder). Every export is read back and checked.")
    ex.add_argument("path")
    ex.add_argument("--to", required=True,
                    choices=["state_dict", "safetensors", "torchscript", "onnx", "pt2"])
    ex.add_argument("-o", "--output", required=True, help="the file to write")
    ex.add_argument("--key", help="the part of the file to export (default: the one that "
                                  "looks most like model weights; '' for the whole file)")
    ex.add_argument("--strip-prefix", action="append", default=[], metavar="P",
                    help="remove this key prefix, e.g. module. (repeatable)")
    ex.add_argument("--add-prefix", default="", metavar="P")
    ex.add_argument("--rename", action="append", default=[], metavar="REGEX=REPLACEMENT")
    ex.add_argument("--include", action="append", default=[], metavar="REGEX")
    ex.add_argument("--exclude", action="append", default=[], metavar="REGEX")
    ex.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                    help="cast floating tensors")
    ex.add_argument("--device", default="cpu", help="map_location (and the device recorded "
                                                    "in a .pt state_dict)")
    ex.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                    help="safetensors __metadata__ entries")
    ex.add_argument("--arch", default="auto", help="torchvision architecture, or auto")
    ex.add_argument("--num-classes", type=int)
    ex.add_argument("--builder", default="", metavar="MODULE:FUNCTION",
                    help="your function that builds the model (runs your code)")
    ex.add_argument("--model-source", default="auto",
                    choices=["auto", "pickled", "torchscript", "torchvision", "callable"])
    ex.add_argument("--input-shape", help="example input, e.g. 1,3,224,224")
    ex.add_argument("--input-dtype", default="float32",
                    choices=["float32", "float64", "float16", "bfloat16", "int64", "int32",
                             "int16", "int8", "uint8", "bool"])
    ex.add_argument("--method", default="trace", choices=["trace", "script"])
    ex.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    ex.add_argument("--opset", type=int)
    ex.add_argument("--dynamic-batch", action="store_true",
                    help="any batch size: traced at batch 2, checked at two batch sizes")
    ex.add_argument("--input-names", default="input")
    ex.add_argument("--output-names", default="output")
    ex.add_argument("--tolerance", type=float, default=1e-4,
                    help="absolute tolerance of the output comparison (default 1e-4)")
    ex.add_argument("--rtol", type=float, default=1e-5,
                    help="relative tolerance: |a-b| ≤ tolerance + rtol·|a| (default 1e-5)")
    ex.add_argument("--trust", action="store_true",
                    help="load the file's own model with torch (torch.nn/torchvision classes)")
    ex.add_argument("--run-code", action="store_true", help="with --trust: let it run its code")
    ex.add_argument("--allow-dangerous", action="store_true")
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--no-verify", action="store_true",
                    help="state_dict/safetensors: skip reading the output back")
    ex.add_argument("--json", action="store_true", help="the result as one JSON object")
    ex.add_argument("--progress", action="store_true",
                    help="JSON lines of progress on stdout, then the result")


def _drive(gen: Any, progress: bool) -> Any:
    """Run an export generator, printing progress lines if asked; return its result."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress:
            print(json.dumps({"event": "progress", "stage": p.stage, "done": p.done,
                              "total": p.total, "detail": p.detail}), flush=True)


def cmd_arch(args: argparse.Namespace) -> int:
    from ckpt_inspector.core import export as ex
    from ckpt_inspector.core.ops import arch

    try:
        ckpt = _open(args.path)
        key = args.key if args.key is not None else (ex.sources(ckpt) or [None])[0]
        key = key if isinstance(key, str) else (key.key if key else "")
        items = ex.state_dict_items(ex.find_node(ckpt, key))
        mapping = ex.KeyRules(strip_prefixes=args.strip_prefix).apply([k for k, _ in items])
    except CheckpointError as err:
        return _unreadable(args.path, err)
    shapes = {new: t.shape for (_old, new), (_k, t) in zip(mapping, items) if new}
    found = arch.candidates(shapes)
    out = [{"name": c.name, "score": round(c.score, 4), "num_classes": c.num_classes,
            "exact": c.exact, "input_shape": list(arch.input_size(c.name)),
            "missing": len(c.missing), "unexpected": len(c.unexpected),
            "mismatched": len(c.mismatched)} for c in found]
    if args.json:
        print(json.dumps({"key": key, "prefix": ex.common_prefix(list(shapes)),
                          "candidates": out}))
    else:
        for c in out:
            print(f"{c['name']:24s} {c['score']:6.1%}" + (" exact" if c["exact"] else "")
                  + (f" (num_classes={c['num_classes']})" if c["num_classes"] else ""))
    return EXIT_OK if out and out[0]["exact"] else EXIT_NOT_SAFE


class _Interrupts:
    """SIGINT and SIGTERM raise KeyboardInterrupt while an export runs, so that its
    temporary files are removed on the way out; ``signum`` records which came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        raise KeyboardInterrupt

    def __enter__(self) -> _Interrupts:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _run_export(gen: Any, progress: bool) -> Any:
    """:func:`_drive`, closing the generator whatever happens (its temporary files go)."""
    try:
        return _drive(gen, progress)
    finally:
        gen.close()


def cmd_export(args: argparse.Namespace) -> int:
    import signal

    from ckpt_inspector.core import export as ex
    from ckpt_inspector.core.ops.torch_load import TrustError

    def fail(message: str, code: int) -> int:
        sys.stdout.flush()
        print(f"ckpt-inspector: {message}", file=sys.stderr)
        return code

    rules = ex.KeyRules(strip_prefixes=args.strip_prefix, add_prefix=args.add_prefix,
                        include=args.include, exclude=args.exclude)
    try:
        rules.renames = [tuple(r.split("=", 1)) for r in args.rename]  # type: ignore[misc]
        if any(len(r) != 2 for r in rules.renames):
            raise ValueError
        metadata = dict(m.split("=", 1) for m in args.metadata)
        shape = tuple(int(s) for s in args.input_shape.split(",")) if args.input_shape \
            else None
        if shape is not None and any(s < 1 for s in shape):
            raise ValueError
    except ValueError:
        return fail("--rename, --metadata take A=B; --input-shape takes sizes ≥ 1 such as "
                    "1,3,224,224", EXIT_USAGE)
    if args.allow_dangerous and not args.run_code:
        return fail("--allow-dangerous needs --run-code too", EXIT_USAGE)
    if args.run_code and not args.trust:
        return fail("--run-code needs --trust too", EXIT_USAGE)
    try:
        ex.check_device(args.device)
    except ex.ExportUsageError as err:
        return fail(str(err), EXIT_USAGE)
    result: dict[str, Any] = {}
    with _Interrupts() as interrupts:
        try:
            result = _export(args, rules, metadata, shape)
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:
            raise
        except TrustError as err:
            return fail(f"{args.path}: not exported: {err}", EXIT_NOT_SAFE)
        except ex.ExportUsageError as err:
            return fail(f"{args.path}: not exported: {err}", EXIT_USAGE)
        except ex.SourceDataError as err:
            return _unreadable(args.path, err)
        except ex.ExportError as err:
            return fail(f"{args.path}: export failed: {err}", EXIT_NOT_SAFE)
        except CheckpointError as err:
            return _unreadable(args.path, err)
        except Exception as err:  # torch's, onnx's: one line, never a traceback
            text = (str(err).strip().splitlines() or [""])[0][:300]
            return fail(f"{args.path}: export failed: {type(err).__name__}: {text}",
                        EXIT_NOT_SAFE)
        if interrupts.signum is not None or not result:
            signum = interrupts.signum or signal.SIGINT
            what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            left = (f"; {result['path']} was written before it" if result.get("written")
                    else "; nothing was written")
            return fail(f"export interrupted ({what}){left}", 128 + signum)
    if args.json or args.progress:
        print(json.dumps({"event": "result", **result} if args.progress else result,
                         default=str), flush=True)
    else:
        print(_export_report(result))
    return EXIT_OK if result.get("passed") else EXIT_NOT_SAFE


def _export(args: argparse.Namespace, rules: Any, metadata: dict[str, str],
            shape: tuple[int, ...] | None) -> dict[str, Any]:
    from ckpt_inspector.core import export as ex

    with bulk_allocation():
        ckpt = _open(args.path)
    key = args.key
    if key is None:
        found = ex.sources(ckpt)
        key = found[0].key if found else ""
    if args.to in ("state_dict", "safetensors"):
        plan = ex.make_plan(ckpt, key, rules, args.dtype, args.device,
                            "pt" if args.to == "state_dict" else "safetensors", metadata)
        written = _run_export(ex.export_state_dict(plan, args.output, args.overwrite,
                                                   verify=not args.no_verify), args.progress)
        preview = plan.preview()
        del preview["keys"]
        preview["tensor_bytes"] = preview.pop("bytes")
        result = {"target": args.to, "source": key or "(whole file)", **preview, **written}
        result["status"] = ("passed" if result["passed"] and result["verified"] else
                            "not verified" if result["passed"] else "failed")
        return result
    from ckpt_inspector.core.model_export import ModelSource, export_model
    from ckpt_inspector.core.ops.torch_load import TrustError

    kind = args.model_source
    if not args.trust and kind in ("pickled", "torchscript"):
        raise TrustError("loading the file's own model takes --trust")
    if kind == "auto" and args.trust and not args.builder and args.arch == "auto":
        kind = "torchscript" if ckpt.format == "torchscript" else "pickled"
    source = ModelSource(kind, args.arch, args.num_classes, args.builder, key, rules,
                         args.run_code, args.allow_dangerous, trust=args.trust)
    result = _run_export(export_model(
        args.path, args.to, args.output, source, device=args.device, input_shape=shape,
        input_dtype=args.input_dtype, method=args.method, exporter=args.exporter,
        opset=args.opset, dynamic_batch=args.dynamic_batch,
        input_names=args.input_names.split(","), output_names=args.output_names.split(","),
        tolerance=args.tolerance, rtol=args.rtol, overwrite=args.overwrite), args.progress)
    result["status"] = ("passed" if result["passed"] else
                        "not verified" if not result["verified"] and result.get("written")
                        else "failed")
    return result


def _export_report(r: dict[str, Any]) -> str:
    if r.get("written", True):
        lines = [f"wrote {r['path']} ({human_bytes(r['bytes'])})"]
    else:
        lines = [f"NOT written: {r['path']} (the export did not pass its checks; any file "
                 "already there is unchanged)"]
    if r["target"] in ("state_dict", "safetensors"):
        lines.append(f"  {r['tensors']:,} tensors from {r['source']}"
                     + (f", {r['excluded']} left out" if r["excluded"] else "")
                     + (f", {r['renamed']} renamed" if r["renamed"] else ""))
        if r.get("verified") is False:
            lines.append("  not read back (--no-verify)")
            return "\n".join(lines)
        lines.append(f"  read back: {r['bit_exact']:,} bit-exact"
                     + (f", {r['cast']:,} cast (largest difference {r['max_abs_diff']:.3g})"
                        if r["cast"] else ""))
        if "torch_load" in r:
            lines.append("  torch.load(weights_only=True): "
                         + ("ok" if r["torch_load"] else f"FAILED: {r.get('torch_error')}"))
    else:
        lines.append(f"  model: {r['model']}; input {r['input_dtype']} {r['input_shape']}")
        if r.get("max_abs_diff") is not None:
            lines.append(f"  reloaded and run: max abs difference {r['max_abs_diff']:.3g} "
                         f"(tolerance {r['tolerance']:g} + {r.get('rtol', 0):g}·|value|)")
        if r.get("dynamic_batch"):
            ok = r.get("dynamic_batch_checked")
            lines.append(f"  dynamic batch: run at batch {r['input_shape'][0]} and "
                         f"{r.get('dynamic_batch_size', 2)}: " + ("ok" if ok else "FAILED"))
        if r.get("onnxruntime"):
            lines.append(f"  onnxruntime: {r['onnxruntime']}; onnx.checker: "
                         + ("ok" if r.get("checker") else "FAILED")
                         + (f"; opset {r['opset']}" if r.get("opset") else ""))
    for p in r.get("problems", []):
        lines.append(f"  PROBLEM: {p}")
    if r.get("passed") and r.get("verified", True):
        lines.append("verification PASSED")
    elif r.get("status") == "not verified":
        lines.append("verification NOT DONE: the model was not run (install onnxruntime); "
                     "exit status 1")
    else:
        lines.append("verification FAILED")
    return "\n".join(lines)


COMMANDS = {"info": cmd_info, "scan": cmd_scan, "demo": cmd_demo, "devices": cmd_devices,
            "load": cmd_load, "export": cmd_export, "arch": cmd_arch, "stats": cmd_stats,
            "diff": cmd_diff}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        return launch_app(argv)
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command]
    for stream in (sys.stdout, sys.stderr):  # a file's names may hold lone surrogates
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return handler(args)
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK
    except KeyboardInterrupt:  # Ctrl-C in info, scan, stats…: one line, no traceback
        print(f"ckpt-inspector {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def launch_app(paths: list[str]) -> int:
    """Start the desktop app with ``paths`` open."""
    try:
        from ckpt_inspector.gui.app import run
    except ImportError as err:
        print(f"ckpt-inspector: the desktop app cannot start ({err}); "
              "the info and scan commands still work", file=sys.stderr)
        return EXIT_NOT_SAFE
    return run(paths)
