"""The model an export starts from, and the example input it is traced and checked with.

A model comes from one of four sources (:class:`ModelSource`): the pickled
``nn.Module`` in the file, a TorchScript archive, a state_dict matched to a
torchvision architecture, or a ``module:callable`` the user names. The first two
go through trusted loading (:mod:`ckpt_inspector.core.ops.torch_load`); the last runs
the user's own code, by their explicit choice.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import CheckpointError, ExportUsageError
from ckpt_inspector.core.layouts import open_checkpoint
from ckpt_inspector.core.ops import arch
from ckpt_inspector.core.ops.export.plan import KeyRules, find_node, state_dict_items
from ckpt_inspector.core.ops.export.verify import brief
from ckpt_inspector.core.ops.torch_load import TrustError
from ckpt_inspector.core.tensors import to_torch

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
    prefix = ""
    if kind == "callable":
        model = _call_builder(source.builder)
        name = None
    else:
        name, classes = source.arch, source.num_classes
        if not source.key and source.rules == KeyRules():  # weights under model., module.
            prefix, found = arch.fit({k: t.shape for k, t in state.items()},
                                     only=None if name == "auto" else name)
            state = arch.under(state, prefix)
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
        except CheckpointError as err:  # no such model: the user named it (exit 2, as check)
            raise ExportUsageError(str(err)) from None
        except Exception as err:
            raise ExportUsageError(f"cannot build torchvision {name!r}: {brief(err)}") from None
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
    where = source.key or (f"{prefix!r}" if prefix else "the file")
    return LoadedModel(model, f"{what}, weights from {where}", name)


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


def other_batch(x: Any) -> Any:
    """The example input with another batch size (2, or 3 when it is 2 already)."""
    import torch

    batch = 3 if x.shape[0] == 2 else 2
    torch.manual_seed(1)
    shape = (batch, *x.shape[1:])
    if x.dtype.is_floating_point:
        return torch.randn(shape, dtype=x.dtype, device=x.device)
    return torch.zeros(shape, dtype=x.dtype, device=x.device)


