"""TorchScript, ONNX and torch.export (``.pt2``) exports, each verified by running it.

A model comes from one of four sources (:class:`ModelSource`): the pickled
``nn.Module`` in the file, a TorchScript archive, a state_dict matched to a
torchvision architecture, or a ``module:callable`` the user names. The first two
go through trusted loading (:mod:`ckpt_inspector.core.ops.torch_load`); the last runs
the user's own code, by their explicit choice. Every export is written to a
temporary file (or folder) beside the target, loaded back from there and run on the
example input (and on a second batch size with ``dynamic_batch``); outputs are
compared with the source model's, and only an export that passed is moved into
place. The one exception: without onnxruntime an ONNX file that passed
``onnx.checker`` is written but reported as not verified.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.export import (
    PARTIAL,
    ExportError,
    ExportUsageError,
    KeyRules,
    check_device,
    check_target,
    find_node,
    replace_into,
    staged_file,
    state_dict_items,
)
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.ops import arch
from ckpt_inspector.core.ops.torch_load import TrustError
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.tensors import to_torch

TARGETS = ("torchscript", "onnx", "pt2")
INPUT_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16",
                "int8", "uint8", "bool")


@dataclass
class ModelSource:
    kind: str = "auto"  # auto | pickled | torchscript | torchvision | callable
    arch: str = "auto"  # torchvision model name, or auto
    num_classes: int | None = None
    builder: str = ""  # "package.module:function" for kind callable
    key: str = ""  # the subtree holding the state_dict
    rules: KeyRules = field(default_factory=KeyRules)
    run_code: bool = False
    allow_dangerous: bool = False
    trust: bool = False  # the user chose to load the file's own model with torch


@dataclass
class LoadedModel:
    model: Any
    description: str
    arch: str | None = None  # the torchvision name, when matched


def _brief(err: BaseException, lines: int = 1, limit: int = 400) -> str:
    text = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (" ".join(text[:lines]) or type(err).__name__)[:limit]


def holds_model(ckpt: Any) -> bool:
    """Whether loading the file's own model would run its pickle (or TorchScript code)."""
    return ckpt.format == "torchscript" or any(n.kind == "module" for n in ckpt.root.walk())


def load_model(path: str, source: ModelSource, device: str = "cpu") -> LoadedModel:
    """The ``nn.Module`` to export, following the source's rules.

    ``auto`` picks, in order: your builder (when given, it wins), the torchvision
    architecture you named, the file's own model (TorchScript, or a pickled module), a
    torchvision architecture matched to the weights. Whenever the file's own
    model would be loaded (its pickle or TorchScript code), ``source.trust`` is required,
    and :func:`~ckpt_inspector.core.ops.torch_load.trusted_load`'s rules apply."""
    ckpt = open_checkpoint(path)
    kind = source.kind
    if kind == "auto":
        kind = ("callable" if source.builder else
                "torchvision" if source.arch != "auto" else
                "torchscript" if ckpt.format == "torchscript" else
                "pickled" if holds_model(ckpt) else "torchvision")
    if kind not in ("pickled", "torchscript", "torchvision", "callable"):
        raise ExportUsageError(f"unknown model source {kind!r}")
    if kind in ("pickled", "torchscript"):
        if not source.trust:
            raise TrustError("the file holds a model: loading it runs its pickle; export it "
                             "with --trust (torch.nn/torchvision classes are allowed by name), "
                             "or build it with --arch or --builder from its weights")
        from ckpt_inspector.core.ops.torch_load import trusted_load

        loaded = trusted_load(path, device, run_code=source.run_code,
                              allow_dangerous=source.allow_dangerous)
        model = _find_module(loaded.obj, source.key)
        if model is None:
            raise ExportUsageError("the file holds no nn.Module to export (pick a torchvision "
                                   "architecture or a builder for its state_dict)")
        return LoadedModel(model.eval(), f"{type(model).__name__} from the file ({loaded.mode})")
    if kind == "callable" and not source.builder:
        raise ExportUsageError("the builder model source needs --builder module:function")
    items = state_dict_items(find_node(ckpt, source.key))
    mapping = source.rules.apply([k for k, _ in items])
    state = {new: t for (old, new), (_k, t) in zip(mapping, items) if new is not None}
    if not state:
        raise ExportUsageError("no tensors to build a model from")
    if kind == "callable":
        model = _call_builder(source.builder)
        name = None
    else:
        name, classes = source.arch, source.num_classes
        if name == "auto":
            found = arch.candidates({k: t.shape for k, t in state.items()})
            if not found or not found[0].exact:
                best = ", ".join(f"{c.name} ({c.score:.0%})" for c in found[:3]) or "none"
                raise ExportUsageError("no torchvision architecture matches these keys and "
                                       f"shapes exactly (closest: {best}); strip a prefix such "
                                       "as 'module.' or name the architecture")
            name, classes = found[0].name, found[0].num_classes
        try:
            model = arch.build(name, classes)
        except CheckpointError:
            raise
        except Exception as err:
            raise ExportUsageError(f"cannot build torchvision {name!r}: {_brief(err)}") from None
    tensors = {k: to_torch(t, "cpu") for k, t in state.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = "".join(f"\n  {ln[:300]}" for ln in lines[1:11])
        more = f"\n  … {len(lines) - 11} more" if len(lines) > 11 else ""
        first = lines[0] if lines else type(err).__name__
        raise ExportUsageError(f"the state_dict does not fit the model: {first}{detail}{more}"
                               ) from None
    model = model.to(device).eval()
    what = f"torchvision {name}" if name else source.builder
    return LoadedModel(model, f"{what}, weights from {source.key or 'the file'}", name)


def _find_module(obj: Any, key: str) -> Any:
    import torch

    if isinstance(obj, (torch.nn.Module, torch.jit.ScriptModule)):
        return obj
    if isinstance(obj, dict):
        if key and key in obj:
            return _find_module(obj[key], "")
        for value in obj.values():
            found = _find_module(value, "")
            if found is not None:
                return found
    return None


def _call_builder(spec: str) -> Any:
    """``package.module:function`` → ``function()``: the user's own code, by choice."""
    module_name, _, func = spec.partition(":")
    if not module_name or not func:
        raise ExportUsageError(f"a builder is given as module:function, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        return getattr(module, func)()
    except Exception as err:
        raise ExportUsageError(f"{spec}: {type(err).__name__}: {err}") from None


def example_input(loaded: LoadedModel, shape: tuple[int, ...] | None = None,
                  dtype: str = "float32", device: str = "cpu") -> Any:
    """The input the export traces with: given, documented for the architecture, or
    derived from the first layer (channels of a convolution, features of a linear)."""
    import torch

    if dtype not in INPUT_DTYPES:
        raise ExportUsageError(f"the example input's dtype is one of {', '.join(INPUT_DTYPES)}"
                               f", not {dtype!r}")
    if shape is None:
        shape = arch.input_size(loaded.arch) if loaded.arch else _derive_shape(loaded.model)
    if any(s < 0 for s in shape):
        raise ExportUsageError(f"the example input's shape {list(shape)} has a negative size")
    torch.manual_seed(0)
    tensor_dtype = getattr(torch, dtype)
    if tensor_dtype.is_floating_point:
        return torch.randn(shape, dtype=tensor_dtype, device=device)
    return torch.zeros(shape, dtype=tensor_dtype, device=device)


def _derive_shape(model: Any) -> tuple[int, ...]:
    for _name, p in model.named_parameters():
        if p.dim() == 4:
            return (1, p.shape[1], 224, 224)
        if p.dim() == 3:
            return (1, p.shape[1], 128)
        if p.dim() == 2:
            return (1, p.shape[1])
        break
    raise ExportUsageError("cannot tell the model's input shape: give it (e.g. 1,3,224,224)")


def _other_batch(x: Any) -> Any:
    """The example input with another batch size (2, or 3 when it is 2 already)."""
    import torch

    batch = 3 if x.shape[0] == 2 else 2
    torch.manual_seed(1)
    shape = (batch, *x.shape[1:])
    if x.dtype.is_floating_point:
        return torch.randn(shape, dtype=x.dtype, device=x.device)
    return torch.zeros(shape, dtype=x.dtype, device=x.device)


def _outputs(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    return []


def compare(expected: Any, got: Any, atol: float, rtol: float = 0.0) -> tuple[float, bool]:
    """``(largest absolute difference, every element within atol + rtol·|expected|)``;
    NaN matches NaN. Raises ExportError when the outputs' number or shapes differ."""
    import torch

    a, b = _outputs(expected), _outputs(got)
    if len(a) != len(b):
        raise ExportError(f"the export returns {len(b)} outputs, the model {len(a)}")
    diff, ok = 0.0, True
    for x, y in zip(a, b):
        y = torch.as_tensor(y)
        if tuple(x.shape) != tuple(y.shape):
            raise ExportError(f"output shapes differ: {list(y.shape)} instead of "
                              f"{list(x.shape)}")
        if not x.numel():
            continue
        x64, y64 = x.detach().cpu().double(), y.detach().cpu().double()
        ok = ok and bool(torch.allclose(y64, x64, rtol=rtol, atol=atol, equal_nan=True))
        finite = torch.isfinite(x64) & torch.isfinite(y64)
        if finite.any():
            diff = max(diff, float((x64[finite] - y64[finite]).abs().max()))
    return diff, ok


def max_abs_diff(expected: Any, got: Any) -> float:
    return compare(expected, got, 0.0)[0]


class _Checks:
    """The verification of one export: problems found, and the largest difference."""

    def __init__(self, atol: float, rtol: float):
        self.atol, self.rtol = atol, rtol
        self.problems: list[str] = []
        self.max_diff: float | None = None

    def run(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, or None with a problem when it raises (an interrupt is not caught)."""
        try:
            return fn()
        except Exception as err:
            self.problems.append(f"{what} failed: {type(err).__name__}: {_brief(err, 2)}")
            return None

    def compare(self, what: str, expected: Any, got: Any) -> bool:
        try:
            diff, ok = compare(expected, got, self.atol, self.rtol)
        except ExportError as err:
            self.problems.append(f"{what}: {err}")
            return False
        self.max_diff = diff if self.max_diff is None else max(self.max_diff, diff)
        if not ok:
            self.problems.append(f"{what}: outputs differ by up to {diff:.3g} (or in NaN), "
                                 f"beyond the tolerance (atol {self.atol:g}, rtol "
                                 f"{self.rtol:g})")
        return ok

    def outputs(self, label: str, run: Callable[[Any], Any], x: Any, expected: Any,
                xb: Any, expected_b: Any, result: dict[str, Any]) -> None:
        """Run the reloaded export on the example input and, for a dynamic batch, on
        another batch size; compare both with the source model."""
        got = self.run(f"running the {label}", lambda: run(x))
        ok = got is not None and self.compare(f"the {label}", expected, got)
        if xb is not None:  # both batch sizes must work
            n = xb.shape[0]
            got_b = self.run(f"running the {label} on a batch of {n}", lambda: run(xb))
            ok_b = got_b is not None and self.compare(f"the {label} on a batch of {n}",
                                                      expected_b, got_b)
            result["dynamic_batch_checked"] = ok and ok_b
            result["dynamic_batch_size"] = n

    @property
    def ok(self) -> bool:
        return not self.problems and self.max_diff is not None


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
        raise ExportUsageError(f"device {device} is not available here: {_brief(err)}"
                               ) from None


def export_model(path: str, target: str, out_path: str, source: ModelSource, *,
                 device: str = "cpu", input_shape: tuple[int, ...] | None = None,
                 input_dtype: str = "float32", method: str = "trace",
                 exporter: str = "dynamo", opset: int | None = None,
                 dynamic_batch: bool = False, input_names: list[str] | None = None,
                 output_names: list[str] | None = None, tolerance: float = 1e-4,
                 rtol: float = 1e-5, overwrite: bool = False) -> Iterator[Progress]:
    """Export, verify the temporary output, and move it into place when it passed; yields
    progress, returns the figures: ``passed``, ``verified``, ``written``, ``problems``,
    ``max_abs_diff`` and, with ``dynamic_batch``, ``dynamic_batch_checked``.

    Problems with the arguments raise :class:`ExportUsageError`; an export that torch
    cannot make raises :class:`ExportError`; a result that does not match is returned
    with ``passed`` false and nothing written."""
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
        raise ExportUsageError("the dynamo exporter needs onnxscript (pip install onnxscript); "
                               "or choose the legacy exporter")
    check_target(out_path, path, overwrite)
    if target == "onnx" and exporter == "dynamo":  # it writes NAME.data beside NAME
        _check_companions([os.path.basename(out_path) + ".data"], out_path, path, overwrite)
    import torch

    _device_available(device)
    yield Progress("loading the model", 0, 4)
    loaded = load_model(path, source, device)
    x = example_input(loaded, input_shape, input_dtype, device)
    if dynamic_batch and x.dim() == 0:
        raise ExportUsageError("a dynamic batch needs an input with a batch dimension")
    xb = _other_batch(x) if dynamic_batch else None
    try:
        with torch.no_grad():
            expected = loaded.model(x)
            expected_b = loaded.model(xb) if xb is not None else None
    except Exception as err:
        raise ExportUsageError(
            f"the model does not run on a {input_dtype} input of shape {list(x.shape)}: "
            f"{type(err).__name__}: {_brief(err)} (give --input-shape / --input-dtype)"
        ) from None
    result: dict[str, Any] = {"target": target, "model": loaded.description,
                              "input_shape": list(x.shape), "input_dtype": input_dtype,
                              "tolerance": tolerance, "rtol": rtol, "verified": True,
                              "dynamic_batch": dynamic_batch}
    checks = _Checks(tolerance, rtol)
    yield Progress(f"exporting to {target}", 1, 4)
    start = time.perf_counter()
    with _quiet():
        if target == "torchscript":
            _torchscript(loaded.model, x, xb, out_path, method, checks, expected, expected_b,
                         result)
        elif target == "pt2":
            _pt2(loaded.model, x, xb, out_path, checks, expected, expected_b, result)
        else:
            _onnx(loaded.model, x, xb, out_path, path, exporter, opset,
                  input_names or ["input"], output_names or ["output"], checks, expected,
                  expected_b, overwrite, result)
    result["seconds"] = time.perf_counter() - start
    result["path"] = os.path.abspath(out_path)
    result["max_abs_diff"] = checks.max_diff
    result["problems"] = checks.problems
    result["passed"] = checks.ok and result["verified"]
    yield Progress("verified", 4, 4)
    return result


def _torchscript(model: Any, x: Any, xb: Any, out_path: str, method: str, checks: _Checks,
                 expected: Any, expected_b: Any, result: dict[str, Any]) -> None:
    import torch

    try:
        if isinstance(model, torch.jit.ScriptModule):
            scripted = model
        elif method == "script":
            scripted = torch.jit.script(model)
        else:
            scripted = torch.jit.trace(model, xb if xb is not None else x)
    except Exception as err:
        raise ExportError(f"torch.jit.{method} failed: {type(err).__name__}: {_brief(err, 3)}"
                          ) from None
    result["method"] = "as loaded" if scripted is model else method
    with staged_file(out_path) as staged:
        with open(staged.path, "wb") as f:
            torch.jit.save(scripted, f)
        result["bytes"] = os.path.getsize(staged.path)
        reloaded = checks.run("reloading the TorchScript file",
                              lambda: torch.jit.load(staged.path, map_location=x.device))
        result["reloaded"] = reloaded is not None
        if reloaded is not None:
            def run(t: Any) -> Any:
                with torch.no_grad():
                    return reloaded(t)
            checks.outputs("reloaded TorchScript", run, x, expected, xb, expected_b, result)
        if checks.ok:
            staged.commit()
        result["written"] = staged.committed


def _pt2(model: Any, x: Any, xb: Any, out_path: str, checks: _Checks, expected: Any,
         expected_b: Any, result: dict[str, Any]) -> None:
    import torch

    try:
        if xb is not None:  # traced at batch 2: a size of 1 would be specialized
            # DYNAMIC: an error if the code fixes the size, while a range the code needs
            # (cuDNN's 65535 limit) is accepted; the runs at two sizes below check it
            batch = getattr(torch.export.Dim, "DYNAMIC", None) or torch.export.Dim("batch")
            program = torch.export.export(model, (xb,), dynamic_shapes=({0: batch},))
        else:
            program = torch.export.export(model, (x,))
    except Exception as err:
        why = _brief(err, 3)
        if xb is not None:
            why = f"the batch dimension cannot be dynamic (the model's code fixes it): {why}"
        raise ExportError(f"torch.export failed: {type(err).__name__}: {why}") from None
    with staged_file(out_path) as staged:
        with open(staged.path, "wb") as f:
            torch.export.save(program, f)
        result["bytes"] = os.path.getsize(staged.path)
        reloaded = checks.run("reloading the .pt2 file",
                              lambda: torch.export.load(staged.path).module())
        result["reloaded"] = reloaded is not None
        if reloaded is not None:
            def run(t: Any) -> Any:
                with torch.no_grad():
                    return reloaded(t)
            checks.outputs("reloaded program", run, x, expected, xb, expected_b, result)
        if checks.ok:
            staged.commit()
        result["written"] = staged.committed


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
        return None, f"installed but it does not import ({_brief(err)})"
    return onnxruntime, None


def _check_companions(names: list[str], out_path: str, source_path: str,
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


def _onnx(model: Any, x: Any, xb: Any, out_path: str, source_path: str, exporter: str,
          opset: int | None, input_names: list[str], output_names: list[str],
          checks: _Checks, expected: Any, expected_b: Any, overwrite: bool,
          result: dict[str, Any]) -> None:
    import onnx
    import torch

    folder = os.path.dirname(os.path.abspath(out_path))
    name = os.path.basename(out_path)
    model_cpu, x_cpu = model.cpu(), x.cpu()
    xb_cpu = xb.cpu() if xb is not None else None
    result["exporter"] = exporter
    work = tempfile.mkdtemp(prefix=f".{name}.", suffix=PARTIAL, dir=folder)
    try:
        staged = os.path.join(work, name)  # the final name: external data refers to it
        kwargs: dict[str, Any] = {"input_names": input_names, "output_names": output_names,
                                  "dynamo": exporter == "dynamo"}
        if opset:
            kwargs["opset_version"] = opset
        if xb_cpu is not None:  # traced at batch 2: a size of 1 would be specialized
            if exporter == "dynamo":
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            else:
                kwargs["dynamic_axes"] = {n: {0: "batch"} for n in input_names + output_names}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress prints
                torch.onnx.export(model_cpu, (xb_cpu if xb_cpu is not None else x_cpu,),
                                  staged, **kwargs)
        except Exception as err:
            raise ExportError(f"torch.onnx.export ({exporter}) failed: "
                              f"{type(err).__name__}: {_brief(err, 2, 300)}") from None
        files = sorted(os.listdir(work))
        _check_companions([f for f in files if f != name], out_path, source_path, overwrite)
        result["files"] = files
        result["bytes"] = sum(os.path.getsize(os.path.join(work, f)) for f in files)
        result["checker"] = checks.run("onnx.checker",
                                       lambda: onnx.checker.check_model(staged) or True) is True
        proto = onnx.load(staged, load_external_data=False)
        opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
        result["opset"] = opsets.get("ai.onnx")
        if opset and result["opset"] != opset:
            hint = (" (the dynamo exporter starts at opset 18 and could not convert this model"
                    "; use --exporter legacy for older opsets)" if exporter == "dynamo" else "")
            checks.problems.append(f"opset {result['opset']} was written, not the {opset} "
                                   f"asked for{hint}")
        if xb_cpu is not None:
            dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
            static = bool(dims) and not dims[0].dim_param
            if static:
                checks.problems.append(
                    f"the batch dimension is fixed at {dims[0].dim_value} in the ONNX graph: "
                    "the model's code does not let the exporter keep it dynamic")
        del proto
        ort, why = _onnxruntime()
        if ort is None:
            result["onnxruntime"] = f"{why}: the model was not run"
            result["verified"] = False
        else:
            result["onnxruntime"] = ort.__version__
            session = checks.run("onnxruntime loading the model", lambda: ort.InferenceSession(
                staged, providers=["CPUExecutionProvider"]))
            if session is not None:
                feed = session.get_inputs()[0].name

                def run(t: Any) -> Any:
                    return [torch.from_numpy(g) for g in session.run(None, {feed: t.numpy()})]
                checks.outputs("ONNX model on onnxruntime", run, x_cpu, expected, xb_cpu,
                               expected_b, result)
            del session
        if xb_cpu is not None and (static or not result["verified"]):
            result["dynamic_batch_checked"] = False
        if checks.ok or (not result["verified"] and not checks.problems):
            _commit_onnx(work, files, name, out_path, source_path)
            result["written"] = True
        else:
            result["written"] = False
    finally:
        shutil.rmtree(work, ignore_errors=True)
