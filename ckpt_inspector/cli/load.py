"""``load``: load a file you trust with torch onto a device and report what came back."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ckpt_inspector.cli._errors import EXIT_NOT_SAFE, EXIT_OK, report, usage
from ckpt_inspector.core.gcpause import bulk_allocation
from ckpt_inspector.core.summary import counted, human_bytes

NAMES = ("load",)


def add_parser(sub: Any) -> None:
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


def run(args: argparse.Namespace) -> int:
    return cmd_load(args)


def cmd_load(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.devices import unavailable
    from ckpt_inspector.core.ops.torch_load import trusted_load

    if args.allow_dangerous and not args.run_code:
        return usage("--allow-dangerous needs --run-code too")
    problem = unavailable(args.device)  # the file may be fine: the device is not here
    if problem:
        return usage(problem)
    try:
        with bulk_allocation():
            loaded = trusted_load(args.path, args.device, run_code=args.run_code,
                                  allow_dangerous=args.allow_dangerous)
    except Exception as err:  # TrustError, CheckpointError, torch's own
        return report(err, args.path, "load")
    result = loaded.describe()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.path}: {result['type']}, {counted(result['tensors'], 'tensor')}, "
              f"{human_bytes(result['nbytes'])} on {', '.join(result['devices']) or args.device}"
              f" in {result['seconds']:.2f} s ({result['mode']})")
        _warn(args.path, result)
    # loaded without running anything, but a script chaining on the exit status must not
    # go on as if the file were fine (as scan and a refused load say 1)
    assembled = "no code ran" in str(result.get("mode", ""))
    return EXIT_NOT_SAFE if assembled and result.get("verdict") == "dangerous" else EXIT_OK


def _warn(path: str, result: dict[str, Any]) -> None:
    """On stderr: a verdict that is not safe, and the entries left out (what an assembled
    checkpoint's readers could not rebuild without running code)."""
    import sys

    if result.get("verdict") not in (None, "safe"):
        print(f"ckpt-inspector: {path}: the verdict is {result['verdict']}"
              + (" (no code ran: only its tensors and plain values were read)"
                 if "no code ran" in result["mode"] else ""), file=sys.stderr)
    left = result.get("left_out") or []
    if left:
        shown = ", ".join(repr(k) for k in left[:5]) + (" …" if len(left) > 5 else "")
        print(f"ckpt-inspector: {path}: {counted(len(left), 'entry', 'entries')} that "
              f"{'is' if len(left) == 1 else 'are'} neither a tensor nor a plain value left "
              f"out: {shown}", file=sys.stderr)
