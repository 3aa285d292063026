"""Match a state_dict to a torchvision architecture, and build that model from it.

Each torchvision classification builder is instantiated once with empty (meta)
weights to record its state_dict keys and shapes; the signatures are cached in
the user's cache folder per torchvision version. A state_dict is scored against
every signature; a classifier head of another size is matched by building with
that ``num_classes``. No weights are downloaded: models are built with
``weights=None`` and filled with the checkpoint's tensors, ``strict=True``.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckpt_inspector.core.errors import CheckpointError


@dataclass
class Candidate:
    name: str
    score: float  # share of keys whose name and shape match (1.0: a perfect match)
    num_classes: int | None = None  # rebuild with this head size
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


@contextlib.contextmanager
def empty_weights() -> Iterator[None]:
    """Build modules whose parameters and buffers live on the meta device (no memory),
    while the builders' own arithmetic still runs on real tensors."""
    import torch

    register_parameter = torch.nn.Module.register_parameter
    register_buffer = torch.nn.Module.register_buffer

    def parameter(self: Any, name: str, param: Any) -> None:
        register_parameter(self, name, param)
        if param is not None:
            self._parameters[name] = torch.nn.Parameter(param.to("meta"),
                                                        requires_grad=param.requires_grad)

    def buffer(self: Any, name: str, tensor: Any, persistent: bool = True) -> None:
        register_buffer(self, name, tensor, persistent)
        if tensor is not None:
            self._buffers[name] = tensor.to("meta")

    torch.nn.Module.register_parameter = parameter  # type: ignore[method-assign]
    torch.nn.Module.register_buffer = buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        torch.nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def model_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def signatures(cache_dir: Path | None = None) -> dict[str, dict[str, list[int]]]:
    """``{model name: {state_dict key: shape}}`` for every torchvision classifier."""
    import torchvision

    from ckpt_inspector.demo import cache_dir as default_cache

    folder = cache_dir or default_cache()
    path = folder / f"torchvision-{torchvision.__version__}-signatures.json"
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            return json.loads(path.read_text())
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in model_names():
            try:
                with empty_weights():
                    model = torchvision.models.get_model(name, weights=None)
            except Exception:  # a builder that needs arguments is skipped
                continue
            out[name] = {k: list(v.shape) for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)
    return out


def _compare(sig: dict[str, list[int]], shapes: dict[str, tuple[int, ...]]) -> Candidate:
    missing = [k for k in sig if k not in shapes]
    unexpected = [k for k in shapes if k not in sig]
    mismatched = [k for k in sig if k in shapes and tuple(sig[k]) != tuple(shapes[k])]
    matched = len(sig) - len(missing) - len(mismatched)
    score = matched / max(len(sig), len(shapes), 1)
    return Candidate("", score, None, missing, unexpected, mismatched)


def _head_size(sig: dict[str, list[int]], shapes: dict[str, tuple[int, ...]],
               mismatched: list[str]) -> int | None:
    """If only the last classifier layer differs, the number of classes the file has."""
    sizes = {shapes[k][0] for k in mismatched if shapes[k]}
    if len(sizes) == 1 and all(len(sig[k]) >= 1 and sig[k][0] == 1000 for k in mismatched):
        return sizes.pop()
    return None


def candidates(shapes: dict[str, tuple[int, ...]], limit: int = 5,
               cache_dir: Path | None = None) -> list[Candidate]:
    """The torchvision architectures closest to these state_dict shapes, best first."""
    out = []
    for name, sig in signatures(cache_dir).items():
        c = _compare(sig, shapes)
        c.name = name
        if c.mismatched and not c.missing and not c.unexpected:
            classes = _head_size(sig, shapes, c.mismatched)
            if classes is not None:
                c.num_classes = classes
                c.score = 1.0
                c.mismatched = []
        if c.score > 0:
            out.append(c)
    out.sort(key=lambda c: (-c.score, c.name))
    return out[:limit]


def build(name: str, num_classes: int | None = None) -> Any:
    """The torchvision model ``name`` with fresh (random) weights; nothing is downloaded."""
    import torchvision

    if name not in model_names():
        raise CheckpointError(f"torchvision has no model called {name!r}")
    kwargs: dict[str, Any] = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchvision.models.get_model(name, **kwargs)


def input_size(name: str) -> tuple[int, int, int, int]:
    """The example input torchvision documents for a classifier (1×3×224×224 mostly)."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name)
        crop = next(iter(weights)).transforms().crop_size[0]
    except Exception:  # no documented size: the common one
        crop = 224
    return (1, 3, int(crop), int(crop))
