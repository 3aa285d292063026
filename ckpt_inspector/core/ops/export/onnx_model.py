"""ONNX exports: the model and its external data staged in a folder beside the target,
checked with ``onnx.checker``, run on onnxruntime, moved into place together."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.errors import CheckpointError, ExportError, ExportUsageError
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.io.atomic import replace_into, staged_folder
from ckpt_inspector.core.ops.export.verify import Checks, Inputs, Steps, brief, save_verified


@dataclass
class OnnxOptions:
    exporter: str
    opset: int | None
    input_names: list[str]
    output_names: list[str]
    overwrite: bool


class FolderStage:
    """The ONNX model staged as ``NAME`` in a temporary folder beside the target, with
    the external data files the exporter writes beside it."""

    def __init__(self, work: str, out_path: str, source_path: str):
        self.work, self.out_path, self.source_path = work, out_path, source_path
        self.name = os.path.basename(out_path)
        self.path = os.path.join(work, self.name)  # the final name: external data refers to it
        self.committed = False

    def files(self) -> list[str]:
        return sorted(os.listdir(self.work))

    def size(self) -> int:
        return sum(os.path.getsize(os.path.join(self.work, f)) for f in self.files())

    def commit(self) -> None:
        _commit_onnx(self.work, self.files(), self.name, self.out_path, self.source_path)
        self.committed = True


def export_onnx(model: Any, inputs: Inputs, out_path: str, source_path: str, opts: OnnxOptions,
          checks: Checks, result: dict[str, Any]) -> None:
    import torch

    model_cpu = model.cpu()
    cpu = Inputs(inputs.x.cpu(), inputs.xb.cpu() if inputs.xb is not None else None,
                 inputs.expected, inputs.expected_b)
    result["exporter"] = opts.exporter
    static = False

    def save(path: str) -> None:
        _onnx_export(model_cpu, cpu, path, opts)

    def inspect() -> None:
        nonlocal static
        static = _onnx_inspect(stage, opts, checks, result, cpu.xb is not None)

    def reload(path: str) -> Callable[[Any], Any] | None:
        ort, why = _onnxruntime()
        if ort is None:
            result["onnxruntime"] = f"{why}: the model was not run"
            result["verified"] = False
            return None
        result["onnxruntime"] = ort.__version__
        session = checks.run("onnxruntime loading the model", lambda: ort.InferenceSession(
            path, providers=["CPUExecutionProvider"]))
        if session is None:
            return None
        feed = session.get_inputs()[0].name
        return lambda t: [torch.from_numpy(g) for g in session.run(None, {feed: t.numpy()})]

    def settle() -> None:
        if cpu.xb is not None and (static or not result["verified"]):
            result["dynamic_batch_checked"] = False

    with staged_folder(out_path) as work:
        stage = FolderStage(work, out_path, source_path)
        save_verified(stage, Steps("ONNX model on onnxruntime", save, reload, inspect, settle),
                      cpu, checks, result)


def _onnx_export(model: Any, inputs: Inputs, path: str, opts: OnnxOptions) -> None:
    import torch

    kwargs: dict[str, Any] = {"input_names": opts.input_names,
                              "output_names": opts.output_names,
                              "dynamo": opts.exporter == "dynamo"}
    if opts.opset:
        kwargs["opset_version"] = opts.opset
    if inputs.xb is not None:  # traced at batch 2: a size of 1 would be specialized
        if opts.exporter == "dynamo":
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        else:
            kwargs["dynamic_axes"] = {n: {0: "batch"}
                                      for n in opts.input_names + opts.output_names}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress prints
            torch.onnx.export(model, (inputs.xb if inputs.xb is not None else inputs.x,),
                              path, **kwargs)
    except Exception as err:
        raise ExportError(f"torch.onnx.export ({opts.exporter}) failed: "
                          f"{type(err).__name__}: {brief(err, 2, 300)}") from None


def _onnx_inspect(stage: FolderStage, opts: OnnxOptions, checks: Checks,
                  result: dict[str, Any], dynamic: bool) -> bool:
    """The files written, ``onnx.checker``, the opset and the batch dimension; whether the
    batch dimension came out fixed."""
    import onnx

    files = stage.files()
    check_companions([f for f in files if f != stage.name], stage.out_path,
                      stage.source_path, opts.overwrite)
    result["files"] = files
    result["checker"] = checks.run("onnx.checker",
                                   lambda: onnx.checker.check_model(stage.path) or True) is True
    proto = onnx.load(stage.path, load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    result["opset"] = opsets.get("ai.onnx")
    if opts.opset and result["opset"] != opts.opset:
        hint = (" (the dynamo exporter starts at opset 18 and could not convert this model"
                "; use --exporter legacy for older opsets)" if opts.exporter == "dynamo" else "")
        checks.problems.append(f"opset {result['opset']} was written, not the {opts.opset} "
                               f"asked for{hint}")
    static = False
    if dynamic:
        dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
        static = bool(dims) and not dims[0].dim_param
        if static:
            checks.problems.append(
                f"the batch dimension is fixed at {dims[0].dim_value} in the ONNX graph: "
                "the model's code does not let the exporter keep it dynamic")
    return static


def _onnxruntime() -> tuple[Any, str | None]:
    """``(module, None)``, or ``(None, why)`` when onnxruntime is not installed or does not
    import. An interrupt that the import turned into an ImportError is raised again."""
    if sys.modules.get("onnxruntime") is None:  # None there: blocked, as if not installed
        try:
            missing = importlib.util.find_spec("onnxruntime") is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            return None, "not installed"
    try:
        import onnxruntime
    except ImportError as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, KeyboardInterrupt):
                raise KeyboardInterrupt from err
            cause = cause.__cause__ or cause.__context__
        return None, f"installed but it does not import ({brief(err)})"
    return onnxruntime, None


def check_companions(names: list[str], out_path: str, source_path: str,
                      overwrite: bool) -> None:
    """Files written beside the model (its external data) follow the rules of the model."""
    folder = os.path.dirname(os.path.abspath(out_path))
    for name in names:
        target = os.path.join(folder, name)
        if not os.path.lexists(target):
            continue
        if os.path.exists(source_path) and os.path.exists(target) and os.path.samefile(
                target, source_path):
            raise ExportUsageError(f"the model's external data {name} would replace the source "
                                   "file: choose another name")
        if os.path.isdir(target):
            raise ExportUsageError(f"{target} is a folder: the model's external data would be "
                                   "written there")
        if not overwrite:
            raise ExportUsageError(f"{target} exists (the model's external data; overwrite it "
                                   "explicitly)")


def _external_files(model_path: str) -> set[str]:
    """The external data files an existing ONNX model refers to (read with the reader,
    which keeps them inside the model's folder)."""
    try:
        ckpt = open_checkpoint(model_path)
    except CheckpointError:
        return set()
    if ckpt.format != "onnx":
        return set()
    out = set()
    for _p, node in ckpt.tensors():
        src = node.tensor.storage.source if node.tensor and node.tensor.storage else None
        path = getattr(src, "path", None)
        if path and os.path.abspath(path) != os.path.abspath(model_path):
            out.add(os.path.abspath(path))
    return out


def _commit_onnx(work: str, files: list[str], name: str, out_path: str,
                 source_path: str) -> None:
    """The external data first, then the model; data files only the replaced model used
    are removed."""
    folder = os.path.dirname(os.path.abspath(out_path))
    stale = _external_files(out_path) if os.path.exists(out_path) else set()
    for f in [f for f in files if f != name] + [name]:
        replace_into(os.path.join(work, f), os.path.join(folder, f))
    kept = {os.path.abspath(os.path.join(folder, f)) for f in files}
    for path in stale - kept:
        if os.path.isfile(path) and not (os.path.exists(source_path)
                                         and os.path.samefile(path, source_path)):
            with contextlib.suppress(OSError):
                os.unlink(path)
