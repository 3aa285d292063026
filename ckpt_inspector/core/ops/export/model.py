"""TorchScript, ONNX and torch.export (``.pt2``) exports, each verified by running it.

Every export goes through one sequence (:func:`save_verified`): staged beside the
target (a file, or a folder for ONNX and its external data), saved, loaded back from
there and run on the example input (and on a second batch size with
``dynamic_batch``), its outputs compared with the source model's, and moved into
place only when that passed. The one exception: without onnxruntime an ONNX file
that passed ``onnx.checker`` is written but reported as not verified.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

from ckpt_inspector.core.errors import ExportError, ExportUsageError
from ckpt_inspector.core.extras import install_hint
from ckpt_inspector.core.io.atomic import check_target, staged_file
from ckpt_inspector.core.ops.export.model_source import (
    INPUT_DTYPES,
    ModelSource,
    example_input,
    load_model,
    other_batch,
)
from ckpt_inspector.core.ops.export.onnx_model import OnnxOptions, check_companions, export_onnx
from ckpt_inspector.core.ops.export.plan import check_device
from ckpt_inspector.core.ops.export.verify import (
    Checks,
    Inputs,
    Steps,
    brief,
    reloaded,
    save_verified,
)
from ckpt_inspector.core.progress import Job, Progress

TARGETS = ("torchscript", "onnx", "pt2")



@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _device_available(device: str) -> None:
    import torch

    try:
        torch.empty(1, device=device)
    except Exception as err:
        raise ExportUsageError(f"device {device} is not available here: {brief(err)}"
                               ) from None


def _check_options(target: str, device: str, input_dtype: str, method: str, exporter: str,
                   tolerance: float, rtol: float) -> None:
    if target not in TARGETS:
        raise ExportUsageError(f"model targets are {', '.join(TARGETS)}, not {target!r}")
    check_device(device)
    if input_dtype not in INPUT_DTYPES:
        raise ExportUsageError(f"the example input's dtype is one of {', '.join(INPUT_DTYPES)}"
                               f", not {input_dtype!r}")
    if not (tolerance >= 0 and rtol >= 0):
        raise ExportUsageError("the tolerances must be numbers ≥ 0")
    if method not in ("trace", "script"):
        raise ExportUsageError(f"TorchScript is made by trace or script, not {method!r}")
    if target == "onnx" and exporter not in ("dynamo", "legacy"):
        raise ExportUsageError(f"the ONNX exporter is dynamo or legacy, not {exporter!r}")
    if target == "onnx" and exporter == "dynamo" and importlib.util.find_spec(
            "onnxscript") is None:
        if importlib.util.find_spec("torch") is None:  # a light install: torch first
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        raise ExportUsageError("the dynamo exporter needs onnxscript (pip install onnxscript, "
                               f"or {install_hint('torch')}); or choose the legacy exporter")


def _inputs(model: Any, x: Any, dynamic_batch: bool, input_dtype: str) -> Inputs:
    """Run the source model on the example input (and another batch size)."""
    import torch

    if dynamic_batch and x.dim() == 0:
        raise ExportUsageError("a dynamic batch needs an input with a batch dimension")
    xb = other_batch(x) if dynamic_batch else None
    try:
        with torch.no_grad():
            expected = model(x)
            expected_b = model(xb) if xb is not None else None
    except Exception as err:
        raise ExportUsageError(
            f"the model does not run on a {input_dtype} input of shape {list(x.shape)}: "
            f"{type(err).__name__}: {brief(err)} (give --input-shape / --input-dtype)"
        ) from None
    return Inputs(x, xb, expected, expected_b)


def export_model(path: str, target: str, out_path: str, source: ModelSource, *,
                 device: str = "cpu", input_shape: tuple[int, ...] | None = None,
                 input_dtype: str = "float32", method: str = "trace",
                 exporter: str = "dynamo", opset: int | None = None,
                 dynamic_batch: bool = False, input_names: list[str] | None = None,
                 output_names: list[str] | None = None, tolerance: float = 1e-4,
                 rtol: float = 1e-5, overwrite: bool = False) -> Job[dict[str, Any]]:
    """Export, verify the temporary output, and move it into place when it passed; yields
    progress, returns the figures: ``passed``, ``verified``, ``written``, ``problems``,
    ``max_abs_diff`` and, with ``dynamic_batch``, ``dynamic_batch_checked``.

    Problems with the arguments raise :class:`ExportUsageError`; an export that torch
    cannot make raises :class:`ExportError`; a result that does not match is returned
    with ``passed`` false and nothing written."""
    _check_options(target, device, input_dtype, method, exporter, tolerance, rtol)
    check_target(out_path, path, overwrite)
    if target == "onnx" and exporter == "dynamo":  # it writes NAME.data beside NAME
        check_companions([os.path.basename(out_path) + ".data"], out_path, path, overwrite)
    _device_available(device)
    yield Progress("loading the model", 0, 4)
    loaded = load_model(path, source, device)
    x = example_input(loaded, input_shape, input_dtype, device)
    inputs = _inputs(loaded.model, x, dynamic_batch, input_dtype)
    result: dict[str, Any] = {"target": target, "model": loaded.description,
                              "input_shape": list(x.shape), "input_dtype": input_dtype,
                              "tolerance": tolerance, "rtol": rtol, "verified": True,
                              "dynamic_batch": dynamic_batch}
    checks = Checks(tolerance, rtol)
    yield Progress(f"exporting to {target}", 1, 4)
    start = time.perf_counter()
    with _quiet():
        if target == "torchscript":
            _torchscript(loaded.model, inputs, out_path, method, checks, result)
        elif target == "pt2":
            _pt2(loaded.model, inputs, out_path, checks, result)
        else:
            export_onnx(loaded.model, inputs, out_path, path,
                        OnnxOptions(exporter, opset, input_names or ["input"],
                               output_names or ["output"], overwrite), checks, result)
    result["seconds"] = time.perf_counter() - start
    result["path"] = os.path.abspath(out_path)
    result["max_abs_diff"] = checks.max_diff
    result["problems"] = checks.problems
    result["passed"] = checks.ok and result["verified"]
    yield Progress("verified", 4, 4)
    return result


# -- TorchScript and .pt2 -------------------------------------------------------------------
def _torchscript(model: Any, inputs: Inputs, out_path: str, method: str, checks: Checks,
                 result: dict[str, Any]) -> None:
    import torch

    x, xb = inputs.x, inputs.xb
    try:
        if isinstance(model, torch.jit.ScriptModule):
            scripted = model
        elif method == "script":
            scripted = torch.jit.script(model)
        else:
            scripted = torch.jit.trace(model, xb if xb is not None else x)
    except Exception as err:
        raise ExportError(f"torch.jit.{method} failed: {type(err).__name__}: {brief(err, 3)}"
                          ) from None
    result["method"] = "as loaded" if scripted is model else method

    def save(path: str) -> None:
        with open(path, "wb") as f:
            torch.jit.save(scripted, f)

    steps = Steps("reloaded TorchScript", save, lambda path: reloaded(
        checks, result, "reloading the TorchScript file",
        lambda: torch.jit.load(path, map_location=x.device)))
    with staged_file(out_path) as staged:
        save_verified(staged, steps, inputs, checks, result)


def _pt2(model: Any, inputs: Inputs, out_path: str, checks: Checks,
         result: dict[str, Any]) -> None:
    import torch

    x, xb = inputs.x, inputs.xb
    try:
        if xb is not None:  # traced at batch 2: a size of 1 would be specialized
            # DYNAMIC: an error if the code fixes the size, while a range the code needs
            # (cuDNN's 65535 limit) is accepted; the runs at two sizes below check it
            batch = getattr(torch.export.Dim, "DYNAMIC", None) or torch.export.Dim("batch")
            program = torch.export.export(model, (xb,), dynamic_shapes=({0: batch},))
        else:
            program = torch.export.export(model, (x,))
    except Exception as err:
        why = brief(err, 3)
        if xb is not None:
            why = f"the batch dimension cannot be dynamic (the model's code fixes it): {why}"
        raise ExportError(f"torch.export failed: {type(err).__name__}: {why}") from None

    def save(path: str) -> None:
        with open(path, "wb") as f:
            torch.export.save(program, f)

    steps = Steps("reloaded program", save, lambda path: reloaded(
        checks, result, "reloading the .pt2 file", lambda: torch.export.load(path).module()))
    with staged_file(out_path) as staged:
        save_verified(staged, steps, inputs, checks, result)
