"""A model built by torch on the meta device (a torchvision architecture, or the user's own
builder), and torch's own ``load_state_dict`` run on it with a state_dict of meta tensors of
the checkpoint's shapes and dtypes: what it reports is what it would report for the real
tensors, key for key, hooks and all (BatchNorm's ``num_batches_tracked``, modules that
rename old keys), without a byte of either side allocated or a weight downloaded.

torch is imported inside the functions (the core imports no torch at import time). The
builder is the user's code, imported and called because they named it; nothing from the
checkpoint runs: only shapes and dtypes our readers recorded reach torch.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import re
import sys
import warnings
from collections import OrderedDict
from typing import Any

from ckpt_inspector.core.ops.check.report import Spec
from ckpt_inspector.core.ops.check.state import CheckUsageError, Item, Outcome, Target

_SIZE_MISMATCH = re.compile(r"size mismatch for (.+): copying a param with shape ")
_NAMED = re.compile(r'parameter named "(.+?)", ')
_HEADER = "Error(s) in loading state_dict for "


def _spec(tensor: Any) -> Spec:
    return Spec(tuple(int(s) for s in tensor.shape), str(tensor.dtype).removeprefix("torch."))


def _placeholder(torch: Any, item: Item) -> Any:
    """What stands for an entry: a meta tensor of its shape and dtype (float32 where torch
    has no such dtype: shapes are what loading checks), or a value that is no tensor."""
    if item.spec.shape is None:
        return item.value if item.value is not None else _Opaque(item.spec.dtype)
    dtype = getattr(torch, item.spec.dtype, None)
    if not isinstance(dtype, torch.dtype) or item.spec.dtype.startswith("q"):
        dtype = torch.float32
    try:
        return torch.empty(item.spec.shape, dtype=dtype, device="meta")
    except (RuntimeError, TypeError):
        return torch.empty(item.spec.shape, dtype=torch.float32, device="meta")


class _Opaque:
    """A value of a type we only know by name (torch reports its type in the error)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


def load_on_meta(model: Any, items: list[Item], versions: dict[str, int] | None) -> Outcome:
    """``model.load_state_dict(sd, strict=True)``'s report for a state_dict of ``items``
    (with ``_metadata`` versions where the file had them), ``model`` on the meta device."""
    import torch

    sd: Any = OrderedDict((i.key, _placeholder(torch, i)) for i in items)
    if versions is not None:
        sd._metadata = OrderedDict((p, {"version": v}) for p, v in versions.items())
    seen: dict[str, list[str]] = {}

    def hook(_module: Any, incompatible: Any) -> None:  # after every module's own hooks
        seen["missing"] = list(incompatible.missing_keys)
        seen["unexpected"] = list(incompatible.unexpected_keys)

    handle = model.register_load_state_dict_post_hook(hook)
    messages: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # strict=False: the same lists (each module checks strictly either way), and
            # only the size mismatches and copy errors in the exception
            model.load_state_dict(sd, strict=False)
    except Exception as err:  # torch's list of errors, or the model's own loader failing
        text = str(err)
        if not isinstance(err, RuntimeError) or not text.startswith(_HEADER) or \
                "missing" not in seen:
            raise CheckUsageError(f"the model's load_state_dict failed on meta tensors: "
                                  f"{type(err).__name__}: {_first_line(err)}") from None
        messages = text.split(":\n\t", 1)[1].split("\n\t")
    finally:
        handle.remove()
    out = Outcome(seen.get("missing", []), seen.get("unexpected", []))
    for message in messages:
        m = _SIZE_MISMATCH.match(message)
        if m:
            out.mismatched.append(m.group(1))
        else:
            named = _NAMED.search(message)
            out.errors.append((named.group(1) if named else None, message))
    return out


class ModelTarget(Target):
    """A module built on the meta device."""

    def __init__(self, kind: str, name: str, model: Any, num_classes: int | None = None):
        self.kind, self.name, self.model, self.num_classes = kind, name, model, num_classes
        self.expected = {k: _spec(v) for k, v in model.state_dict().items()
                         if hasattr(v, "shape")}
        self.extra = [k for k, v in model.state_dict().items() if not hasattr(v, "shape")]

    def load(self, items: list[Item], versions: dict[str, int] | None) -> Outcome:
        return load_on_meta(self.model, items, versions)

    def with_classes(self, num_classes: int) -> Target | None:
        if self.kind != "arch":
            return None
        try:
            return arch_target(self.name, num_classes)
        except CheckUsageError:
            return None

    def build_code(self, num_classes: int | None = None) -> str:
        if self.kind == "arch":
            extra = f", num_classes={num_classes}" if num_classes else ""
            return ("import torchvision\n"
                    f"model = torchvision.models.get_model({json.dumps(self.name)}, weights=None"
                    f"{extra})")
        module, _, fn = self.name.rpartition(":")
        if module.endswith(".py"):
            return f"model = {fn}()  # from {module}"
        return f"from {module} import {fn}\nmodel = {fn}()"

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "class": type(self.model).__name__}
        if self.num_classes is not None:
            out["num_classes"] = self.num_classes
        return out


# -- building ------------------------------------------------------------------------------
def arch_names() -> list[str]:
    from ckpt_inspector.core.ops.arch import model_names

    return model_names()


def arch_target(name: str, num_classes: int | None = None) -> ModelTarget:
    """torchvision's ``name`` with empty (meta) weights; nothing is downloaded."""
    import torchvision

    from ckpt_inspector.core.ops.arch import empty_weights

    if name not in arch_names():
        close = [n for n in arch_names() if name.lower() in n][:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else \
            " (ckpt-inspector check --list-arch lists them)"
        raise CheckUsageError(f"torchvision has no model called {name!r}{hint}")
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        with warnings.catch_warnings(), empty_weights():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(name, **kwargs)
    except Exception as err:
        raise CheckUsageError(f"torchvision could not build {name!r}: "
                              f"{type(err).__name__}: {_first_line(err)}") from None
    return _target("arch", name, model, num_classes)


def builder_target(spec: str) -> ModelTarget:
    """The module ``pkg.mod:fn`` (or ``path/to/file.py:fn``) returns when called with no
    arguments, built under ``torch.device("meta")`` (or, if that fails, with each
    parameter moved to meta as it is made)."""
    import torch

    fn = load_builder(spec)
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = fn()
    except Exception:  # arithmetic meta tensors cannot do (.item()): build for real
        from ckpt_inspector.core.ops.arch import empty_weights

        try:
            with warnings.catch_warnings(), empty_weights():
                warnings.simplefilter("ignore")
                model = fn()
        except Exception as err:
            raise CheckUsageError(f"the builder {spec} failed: {type(err).__name__}: "
                                  f"{_first_line(err)}") from None
    if not isinstance(model, torch.nn.Module):
        raise CheckUsageError(f"the builder {spec} returned a {type(model).__name__}, not a "
                              "torch.nn.Module")
    return _target("builder", spec, model)


def _target(kind: str, name: str, model: Any, num_classes: int | None = None) -> ModelTarget:
    """The model moved to meta (a builder may have made some tensors elsewhere) with the
    state_dict it expects; a model whose ``state_dict()`` fails there is bad input."""
    try:
        return ModelTarget(kind, name, model.to("meta"), num_classes)
    except Exception as err:
        raise CheckUsageError(f"{name}: the model's state_dict() failed on the meta device: "
                              f"{type(err).__name__}: {_first_line(err)}") from None


def load_builder(spec: str) -> Any:
    """The function ``spec`` names: ``pkg.mod:fn`` imported as Python imports it (the
    current folder first, as ``python -m`` does), or ``file.py:fn`` from that file (its
    folder first on the path, for its own imports)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CheckUsageError(f"--builder takes pkg.module:function or file.py:function, "
                              f"not {spec!r}")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = os.path.abspath(module_name)
            if not os.path.isfile(path):
                raise CheckUsageError(f"the builder's file {module_name} does not exist")
            _prepend(os.path.dirname(path))
            name = "_ckpt_inspector_builder_" + re.sub(r"\W", "_",
                                                       os.path.basename(path)[:-3])
            loader = importlib.util.spec_from_file_location(name, path)
            if loader is None or loader.loader is None:
                raise CheckUsageError(f"cannot import {module_name}")
            module = importlib.util.module_from_spec(loader)
            sys.modules[name] = module
            loader.loader.exec_module(module)
        else:
            _prepend(os.getcwd())
            module = importlib.import_module(module_name)
    except CheckUsageError:
        raise
    except BaseException as err:  # SystemExit too: one line, exit 2
        raise CheckUsageError(f"cannot import the builder's module {module_name}: "
                              f"{type(err).__name__}: {_first_line(err)}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise CheckUsageError(f"{module_name} has no {attr!r}")
    if not callable(fn):
        raise CheckUsageError(f"{module_name}.{attr} is not callable")
    return fn


def _prepend(folder: str) -> None:
    with contextlib.suppress(ValueError):
        sys.path.remove(folder)
    sys.path.insert(0, folder)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
