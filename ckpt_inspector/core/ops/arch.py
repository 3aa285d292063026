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
from collections import Counter
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
               cache_dir: Path | None = None, only: str | None = None) -> list[Candidate]:
    """The torchvision architectures closest to these state_dict shapes, best first
    (``only``: that one architecture)."""
    out = []
    for name, sig in signatures(cache_dir).items():
        if only is not None and name != only:
            continue
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


MAX_PREFIXES = 6


def prefixes(keys: list[str]) -> list[str]:
    """Prefixes a model's keys may sit under, to try: none, the one every key shares
    (``module.`` of DataParallel), then the first segments holding the most keys
    (``model.`` of a DCP or Lightning checkpoint beside ``optim.``)."""
    out = [""]
    common = _common_prefix(keys)
    if common:
        out.append(common)
    firsts = Counter(k.split(".", 1)[0] + "." for k in keys if "." in k)
    out += [p for p, _n in firsts.most_common(MAX_PREFIXES) if p not in out]
    return out[:MAX_PREFIXES]


def _common_prefix(keys: list[str]) -> str:
    parts = [k.split(".")[:-1] for k in keys]
    if not parts:
        return ""
    n = min(len(p) for p in parts)
    first = parts[0]
    for p in parts[1:]:
        n = next((i for i in range(n) if p[i] != first[i]), n)
    return "".join(f"{s}." for s in first[:n])


def under(shapes: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with ``prefix``, without it."""
    if not prefix:
        return dict(shapes)
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def fit(shapes: dict[str, tuple[int, ...]], only: str | None = None,
        cache_dir: Path | None = None) -> tuple[str, list[Candidate]]:
    """The prefix (of :func:`prefixes`) under which the shapes best match a torchvision
    architecture (``only``: that one), and the candidates there; no prefix on a tie."""
    best: tuple[str, list[Candidate]] = ("", [])
    for prefix in prefixes(list(shapes)):
        found = candidates(under(shapes, prefix), cache_dir=cache_dir, only=only)
        if found and (not best[1] or (found[0].exact, found[0].score) >
                      (best[1][0].exact, best[1][0].score)):
            best = (prefix, found)
    return best


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
