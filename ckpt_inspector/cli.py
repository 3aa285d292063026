"""Command line: ``ckpt-inspector [FILES...]``, ``info``, ``scan``.

Exit codes: 0 ok / safe, 1 not safe, 2 usage, 3 unreadable input (one line on
stderr naming the file and the problem, never a traceback).
"""

from __future__ import annotations

import argparse
import json
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
        json.dump(info_json(ckpt), sys.stdout, indent=1)
        sys.stdout.write("\n")
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


def cmd_load(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.torch_load import TrustError, trusted_load

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


COMMANDS = {"info": cmd_info, "scan": cmd_scan, "demo": cmd_demo, "devices": cmd_devices,
            "load": cmd_load}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help", "--version"):
        return launch_app(argv)
    args = parser.parse_args(argv)
    handler = COMMANDS[args.command]
    try:
        return handler(args)
    except BrokenPipeError:  # e.g. piped into head
        return EXIT_OK


def launch_app(paths: list[str]) -> int:
    """Start the desktop app with ``paths`` open."""
    try:
        from ckpt_inspector.gui.app import run
    except ImportError as err:
        print(f"ckpt-inspector: the desktop app cannot start ({err}); "
              "the info and scan commands still work", file=sys.stderr)
        return EXIT_NOT_SAFE
    return run(paths)
