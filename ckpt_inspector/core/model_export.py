"""TorchScript, ONNX and torch.export (``.pt2``) exports, each verified by running it.

A model comes from one of four sources (:class:`ModelSource`): the pickled
``nn.Module`` in the file, a TorchScript archive, a state_dict matched to a
torchvision architecture, or a ``module:callable`` the user names. The first two
go through trusted loading (:mod:`ckpt_inspector.core.torch_load`); the last runs
the user's own code, by their explicit choice. Every export is written
atomically, loaded back and run on the example input; outputs are compared with
the source model's.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core import arch
from ckpt_inspector.core.export import (
    ExportError,
    KeyRules,
    atomic_file,
    check_target,
    find_node,
    state_dict_items,
)
from ckpt_inspector.core.formats import open_checkpoint
from ckpt_inspector.core.progress import Progress
from ckpt_inspector.core.tensors import to_torch

TARGETS = ("torchscript", "onnx", "pt2")


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


@dataclass
class LoadedModel:
    model: Any
    description: str
    arch: str | None = None  # the torchvision name, when matched


def load_model(path: str, source: ModelSource, device: str = "cpu") -> LoadedModel:
    """The ``nn.Module`` to export, following the source's rules."""

    ckpt = open_checkpoint(path)
    kind = source.kind
    if kind == "auto":
        kind = {"torchscript": "torchscript"}.get(ckpt.format) or (
            "pickled" if _holds_module(ckpt) else
            "callable" if source.builder else "torchvision")
    if kind in ("pickled", "torchscript"):
        from ckpt_inspector.core.torch_load import trusted_load

        loaded = trusted_load(path, device, run_code=source.run_code,
                              allow_dangerous=source.allow_dangerous)
        model = _find_module(loaded.obj, source.key)
        if model is None:
            raise ExportError("the file holds no nn.Module to export (pick a torchvision "
                              "architecture or a builder for its state_dict)")
        return LoadedModel(model.eval(), f"{type(model).__name__} from the file ({loaded.mode})")
    items = state_dict_items(find_node(ckpt, source.key))
    mapping = source.rules.apply([k for k, _ in items])
    state = {new: t for (old, new), (_k, t) in zip(mapping, items) if new is not None}
    if not state:
        raise ExportError("no tensors to build a model from")
    if kind == "callable":
        model = _call_builder(source.builder)
        name = None
    else:
        name, classes = source.arch, source.num_classes
        if name == "auto":
            found = arch.candidates({k: t.shape for k, t in state.items()})
            if not found or not found[0].exact:
                best = ", ".join(f"{c.name} ({c.score:.0%})" for c in found[:3]) or "none"
                raise ExportError("no torchvision architecture matches these keys and shapes "
                                  f"exactly (closest: {best}); strip a prefix such as "
                                  "'module.' or name the architecture")
            name, classes = found[0].name, found[0].num_classes
        model = arch.build(name, classes)
    tensors = {k: to_torch(t, "cpu") for k, t in state.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ExportError(f"the state_dict does not fit the model: {first}") from None
    model = model.to(device).eval()
    what = f"torchvision {name}" if name else source.builder
    return LoadedModel(model, f"{what}, weights from {source.key or 'the file'}", name)


def _holds_module(ckpt: Any) -> bool:
    return any(n.kind == "module" for n in ckpt.root.walk())


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
        raise ExportError(f"a builder is given as module:function, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        return getattr(module, func)()
    except Exception as err:
        raise ExportError(f"{spec}: {type(err).__name__}: {err}") from None


def example_input(loaded: LoadedModel, shape: tuple[int, ...] | None = None,
                  dtype: str = "float32", device: str = "cpu") -> Any:
    """The input the export traces with: given, documented for the architecture, or
    derived from the first layer (channels of a convolution, features of a linear)."""
    import torch

    if shape is None:
        shape = arch.input_size(loaded.arch) if loaded.arch else _derive_shape(loaded.model)
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
    raise ExportError("cannot tell the model's input shape: give it (e.g. 1,3,224,224)")


def _outputs(value: Any) -> list[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _outputs(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _outputs(v)]
    return []


def max_abs_diff(expected: Any, got: Any) -> float:
    import torch

    a, b = _outputs(expected), _outputs(got)
    if len(a) != len(b):
        raise ExportError(f"the export returns {len(b)} outputs, the model {len(a)}")
    diff = 0.0
    for x, y in zip(a, b):
        y = torch.as_tensor(y)
        if x.shape != y.shape:
            raise ExportError(f"output shapes differ: {list(x.shape)} vs {list(y.shape)}")
        if x.numel():
            diff = max(diff, float((x.detach().double().cpu() - y.detach().double().cpu())
                                   .abs().max()))
    return diff


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export_model(path: str, target: str, out_path: str, source: ModelSource, *,
                 device: str = "cpu", input_shape: tuple[int, ...] | None = None,
                 input_dtype: str = "float32", method: str = "trace",
                 exporter: str = "dynamo", opset: int | None = None,
                 dynamic_batch: bool = False, input_names: list[str] | None = None,
                 output_names: list[str] | None = None, tolerance: float = 1e-4,
                 overwrite: bool = False) -> Iterator[Progress]:
    """Export and verify; yields progress, returns the verification figures."""
    import torch

    if target not in TARGETS:
        raise ExportError(f"model targets are {', '.join(TARGETS)}, not {target!r}")
    check_target(out_path, path, overwrite)
    yield Progress("loading the model", 0, 4)
    loaded = load_model(path, source, device)
    x = example_input(loaded, input_shape, input_dtype, device)
    with torch.no_grad():
        expected = loaded.model(x)
    result: dict[str, Any] = {"target": target, "model": loaded.description,
                              "input_shape": list(x.shape), "input_dtype": input_dtype,
                              "tolerance": tolerance}
    yield Progress(f"exporting to {target}", 1, 4)
    start = time.perf_counter()
    with _quiet():
        if target == "torchscript":
            result.update(_torchscript(loaded.model, x, out_path, method, expected))
        elif target == "pt2":
            result.update(_pt2(loaded.model, x, out_path, expected))
        else:
            result.update(_onnx(loaded.model, x, out_path, exporter, opset, dynamic_batch,
                                input_names or ["input"], output_names or ["output"],
                                expected, tolerance))
    result["seconds"] = time.perf_counter() - start
    result["path"] = os.path.abspath(out_path)
    folder = os.path.dirname(result["path"])
    result["bytes"] = sum(os.path.getsize(os.path.join(folder, f))
                          for f in result.get("files", [os.path.basename(out_path)]))
    diff = result.get("max_abs_diff")
    if result.get("passed_without_run"):
        result["passed"] = bool(result.get("checker"))
    else:
        result["passed"] = diff is not None and diff <= tolerance and result.get("checker", True)
    yield Progress("verified", 4, 4)
    return result


def _torchscript(model: Any, x: Any, out_path: str, method: str, expected: Any) -> dict:
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        scripted = model
    elif method == "script":
        scripted = torch.jit.script(model)
    else:
        scripted = torch.jit.trace(model, x)
    with atomic_file(out_path) as tmp, open(tmp, "wb") as f:
        torch.jit.save(scripted, f)
    reloaded = torch.jit.load(out_path, map_location=x.device)
    with torch.no_grad():
        got = reloaded(x)
    return {"method": "as loaded" if scripted is model else method,
            "max_abs_diff": max_abs_diff(expected, got), "reloaded": True}


def _pt2(model: Any, x: Any, out_path: str, expected: Any) -> dict:
    import torch

    program = torch.export.export(model, (x,))
    with atomic_file(out_path) as tmp, open(tmp, "wb") as f:
        torch.export.save(program, f)
    reloaded = torch.export.load(out_path)
    with torch.no_grad():
        got = reloaded.module()(x)
    return {"max_abs_diff": max_abs_diff(expected, got), "reloaded": True}


def _onnx(model: Any, x: Any, out_path: str, exporter: str, opset: int | None,
          dynamic_batch: bool, input_names: list[str], output_names: list[str],
          expected: Any, tolerance: float) -> dict:
    import onnx
    import torch

    if exporter not in ("dynamo", "legacy"):
        raise ExportError(f"the ONNX exporter is dynamo or legacy, not {exporter!r}")
    if exporter == "dynamo" and importlib.util.find_spec("onnxscript") is None:
        raise ExportError("the dynamo exporter needs onnxscript (pip install onnxscript); "
                          "or choose the legacy exporter")
    folder = os.path.dirname(os.path.abspath(out_path))
    name = os.path.basename(out_path)
    model_cpu, x_cpu = model.cpu(), x.cpu()
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=folder) as work:
        staged = os.path.join(work, name)  # the final name: external data refers to it
        kwargs: dict[str, Any] = {"input_names": input_names, "output_names": output_names,
                                  "dynamo": exporter == "dynamo"}
        if opset:
            kwargs["opset_version"] = opset
        if dynamic_batch:
            if exporter == "dynamo":
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            else:
                kwargs["dynamic_axes"] = {n: {0: "batch"} for n in input_names + output_names}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress prints
                torch.onnx.export(model_cpu, (x_cpu,), staged, **kwargs)
        except Exception as err:
            raise ExportError(f"torch.onnx.export ({exporter}) failed: "
                              f"{str(err).splitlines()[0][:300]}") from None
        onnx.checker.check_model(staged)
        files = sorted(os.listdir(work))
        for f in files:  # the model and its external data, renamed into place
            shutil.move(os.path.join(work, f), os.path.join(folder, f + ".ckpt-part"))
        for f in files:
            os.replace(os.path.join(folder, f + ".ckpt-part"), os.path.join(folder, f))
    opsets = {o.domain or "ai.onnx": o.version for o in onnx.load(out_path,
                                                                 load_external_data=False)
              .opset_import}
    result: dict[str, Any] = {"exporter": exporter, "opset": opsets.get("ai.onnx"),
                              "checker": True, "files": files}
    try:
        import onnxruntime as ort
    except ImportError:
        result["max_abs_diff"] = None
        result["onnxruntime"] = "not installed: the run on onnxruntime was skipped"
        result["passed_without_run"] = True
        return result
    session = ort.InferenceSession(out_path, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x_cpu.numpy()}
    got = session.run(None, feeds)
    result["max_abs_diff"] = max_abs_diff(expected, [torch.from_numpy(g) for g in got])
    result["onnxruntime"] = ort.__version__
    if dynamic_batch:
        batch = torch.cat([x_cpu, x_cpu])
        got2 = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
        result["dynamic_batch_checked"] = got2[0].shape[0] == 2
    return result

