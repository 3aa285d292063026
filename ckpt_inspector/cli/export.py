"""``export``: a state_dict, safetensors, TorchScript, ONNX or .pt2 file, verified.

The options become an :class:`~ckpt_inspector.core.ops.export.request.ExportRequest`
(the window's export dialog makes the same request and runs this command with its
``to_argv()``); the result is printed as JSON (``--json``; ``--progress`` adds progress
lines before it) or as the text report of
:meth:`~ckpt_inspector.core.ops.export.result.ExportResult.text`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from ckpt_inspector.cli import _common
from ckpt_inspector.cli._errors import EXIT_NOT_SAFE, EXIT_OK, fail, report, usage
from ckpt_inspector.core.errors import ExportUsageError
from ckpt_inspector.core.gcpause import bulk_allocation
from ckpt_inspector.core.progress import result_line
from ckpt_inspector.core.progress import run as run_job

NAMES = ("export",)


def add_parser(sub: Any) -> None:
    ex = sub.add_parser(
        "export", help="export to a state_dict, safetensors, a sharded Hugging Face model, "
                       "TorchScript, ONNX or .pt2, verified",
        description="State_dict and safetensors exports read tensors from the file (no torch "
                    "load); TorchScript, ONNX and .pt2 need a model: the file's own (with "
                    "--trust), a torchvision architecture matched to its state_dict (--arch), "
                    "or your builder (--builder). Every export is read back and checked.")
    ex.add_argument("path")
    ex.add_argument("--to", required=True,
                    choices=["state_dict", "safetensors", "hf-sharded", "torchscript", "onnx",
                             "pt2"],
                    help="hf-sharded: a folder of model-0000K-of-0000N.safetensors shards and "
                         "model.safetensors.index.json, split as huggingface_hub does")
    ex.add_argument("-o", "--output", required=True,
                    help="the file to write (the folder, for hf-sharded)")
    ex.add_argument("--max-shard-size", metavar="SIZE",
                    help="hf-sharded: the largest shard, e.g. 5GB (the default), 500MB, or "
                         "bytes; a tensor larger than that gets a shard of its own")
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
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    from ckpt_inspector.core.io.urls import is_url
    from ckpt_inspector.core.ops.export.names import name_warning
    from ckpt_inspector.core.ops.export.request import ExportRequest, run_export

    if is_url(args.output):  # a remote file is never written
        return usage("the output is written to a local path: ckpt-inspector writes no URL")
    try:
        request = ExportRequest.from_args(args)
    except ExportUsageError as err:
        return usage(str(err))
    result = None
    with _Interrupts() as interrupts:
        try:
            with bulk_allocation():
                ckpt = _common.open_file(args.path)
            result = run_job(run_export(request, ckpt), _common.progress_printer(args.progress))
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:
            raise
        except Exception as err:
            return report(err, args.path, "export")
        if interrupts.signum is not None or result is None:
            signum = interrupts.signum or signal.SIGINT
            what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
            left = (f"; {result.path} was written before it" if result and result.written
                    else "; nothing was written")
            return fail(f"export interrupted ({what}){left}", 128 + signum)
    if args.progress:
        print(result_line(result.to_json()), flush=True)
    elif args.json:
        print(json.dumps(result.to_json(), default=str), flush=True)
    else:
        print(result.text())
    mismatch = name_warning(request.to, result.path or request.output)
    if mismatch and result.written:  # written as asked, but tools go by the name
        sys.stdout.flush()
        print(f"ckpt-inspector: warning: {mismatch}", file=sys.stderr)
    return EXIT_OK if result.passed else EXIT_NOT_SAFE
