"""Checks of a written export: tensors read back against their source, model outputs
compared with the source model's, and the one sequence every model export goes through
(:func:`save_verified`: stage, save, reload, run, compare, commit)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core import dtypes
from ckpt_inspector.core.errors import ExportError
from ckpt_inspector.core.ops.export.pieces import PIECE, as_float64, rechunk, tensor_pieces
from ckpt_inspector.core.ops.export.plan import Plan
from ckpt_inspector.core.progress import Job, Progress
from ckpt_inspector.core.tree import key_of


def torch_load_check(path: str) -> dict[str, Any]:
    """Does ``torch.load(weights_only=True)`` read the file? Loaded onto the cpu whatever
    device it records (mmap: no second copy); ``{}`` without torch."""
    if importlib.util.find_spec("torch") is None:
        return {}
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {"torch_load": True}
    except Exception as err:
        return {"torch_load": False, "torch_error": (str(err) or type(err).__name__)
                .splitlines()[0]}



def _torch_cast(raw: bytes, src: str, dst: str) -> Any:
    """torch's own ``.to(dst)`` of little-endian ``src`` data: the reference a cast is
    checked against (None without torch or on a big-endian machine)."""
    if sys.byteorder != "little" or importlib.util.find_spec("torch") is None:
        return None
    import numpy as np
    import torch

    t = torch.frombuffer(bytearray(raw), dtype=getattr(torch, src)) if raw else \
        torch.empty(0, dtype=getattr(torch, src))
    out = t.to(getattr(torch, dst))
    return np.frombuffer(out.view(torch.uint8).numpy().tobytes(),
                         {"float64": "<u8", "float32": "<u4"}.get(dst, "<u2"))


_FLOAT_MAX = {"float64": 1.7976931348623157e308, "float32": 3.4028234663852886e38,
              "float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def _decoded(name: str) -> bool:
    d = dtypes.get(name)
    return d is not None and d.block is not None


class _CastCheck:
    """One cast tensor compared with its source, piece by piece: overflow to ±inf where the
    source was finite, NaN gained or lost, and elements that differ from torch's cast."""

    def __init__(self, key: str, src: str, dst: str):
        self.key, self.src, self.dst = key, src, dst
        self.overflow = self.nan_gained = self.nan_lost = self.differ = 0
        self.largest = 0.0
        self.max_diff = 0.0
        self.reference = True

    def add(self, a: bytes, b: bytes) -> None:
        import numpy as np

        x, y = as_float64(a, self.src), as_float64(b, self.dst)
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(x)
            over = finite & np.isinf(y)
            if over.any():
                self.overflow += int(over.sum())
                self.largest = max(self.largest, float(np.max(np.abs(x[over]))))
            nan_x, nan_y = np.isnan(x), np.isnan(y)
            self.nan_gained += int((nan_y & ~nan_x).sum())
            self.nan_lost += int((nan_x & ~nan_y).sum())
            both = finite & np.isfinite(y)
            if both.any():
                self.max_diff = max(self.max_diff, float(np.max(np.abs(x[both] - y[both]))))
        ref = _torch_cast(a, self.src, self.dst)
        if ref is None:
            self.reference = False
            return
        got = np.frombuffer(b, ref.dtype)
        self.differ += int(((ref != got) & ~(nan_y & np.isnan(as_float64(ref.tobytes(),
                                                                          self.dst)))).sum())

    def problems(self) -> list[str]:
        out = []
        if self.overflow:
            out.append(f"{self.key}: {self.overflow:,} finite value(s) overflow to ±inf in "
                       f"{self.dst} (largest |value| {self.largest:.6g}; {self.dst} holds "
                       f"at most {_FLOAT_MAX[self.dst]:.6g})")
        if self.nan_gained:
            out.append(f"{self.key}: {self.nan_gained:,} value(s) became NaN")
        if self.nan_lost:
            out.append(f"{self.key}: {self.nan_lost:,} NaN value(s) were not kept")
        if self.differ:
            out.append(f"{self.key}: {self.differ:,} value(s) differ from torch's own cast "
                       f"to {self.dst}")
        return out


def verify_state_dict(plan: Plan, out_path: str) -> Job[dict[str, Any]]:
    """Read the written file back with the reader and compare every tensor with its source:
    bytes for tensors written as they were; for cast ones, each element against torch's own
    ``.to(dtype)`` of the source, and no finite value may become ±inf (overflow) and no NaN
    may appear or vanish. Returns ``{"tensors", "bit_exact", "cast", "max_abs_diff"
    (largest finite difference of a cast), "problems"}``; any problem fails the export."""
    from ckpt_inspector.core.formats import open_checkpoint

    return (yield from verify_tensors(plan, open_checkpoint(out_path)))


def verify_tensors(plan: Plan, opened: Any) -> Job[dict[str, Any]]:
    """:func:`verify_state_dict` against an output already opened (a
    :class:`~ckpt_inspector.core.tree.Checkpoint`: one file, or a folder of shards)."""
    written = {key: node.tensor for key, node in
               ((key_of(p), n) for p, n in opened.tensors())}
    problems: list[str] = []
    exact = cast = 0
    max_diff = 0.0
    reference = True
    total = plan.nbytes
    done = 0
    for key, src in plan.items:
        out = written.get(key)
        want = plan.out_dtype(src)
        if out is None:
            problems.append(f"{key}: missing from the output")
            continue
        if out.shape != src.shape or out.dtype != want:
            problems.append(f"{key}: {out.dtype}{list(out.shape)} written, "
                            f"{want}{list(src.shape)} expected")
            continue
        item = dtypes.itemsize(want) or 1
        step = PIECE - PIECE % (item * (src.itemsize or 1))
        if want == src.dtype or _decoded(src.dtype):  # values as decoded: written exactly
            same = all(a == b for a, b in zip(
                rechunk(tensor_pieces(src, want), step), rechunk(tensor_pieces(out, want), step),
                strict=True))
            exact += same
            if not same:
                problems.append(f"{key}: bytes differ from the source")
        else:
            cast += 1
            check = _CastCheck(key, src.dtype, want)
            src_step = step // item * src.itemsize
            for a, b in zip(rechunk(tensor_pieces(src, src.dtype), src_step),
                            rechunk(tensor_pieces(out, want), step), strict=True):
                check.add(a, b)
            max_diff = max(max_diff, check.max_diff)
            reference = reference and check.reference
            problems.extend(check.problems())
        done += out.nbytes
        yield Progress("verifying", done, total, key)
    extra = set(written) - {k for k, _ in plan.items}
    if extra:
        problems.append(f"{len(extra)} unexpected tensors in the output")
    result = {"tensors": len(plan.items), "bit_exact": exact, "cast": cast,
              "max_abs_diff": max_diff, "problems": problems}
    if cast and not reference:
        result["cast_reference"] = "torch is not available: casts checked for overflow only"
    return result


def brief(err: BaseException, lines: int = 1, limit: int = 400) -> str:
    text = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (" ".join(text[:lines]) or type(err).__name__)[:limit]


# -- model outputs -------------------------------------------------------------------------
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


class Checks:
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
            self.problems.append(f"{what} failed: {type(err).__name__}: {brief(err, 2)}")
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


# -- the sequence of a model export ------------------------------------------------------
@dataclass
class Inputs:
    """The example input, the input at another batch size (``dynamic_batch``, else
    None), and the source model's outputs on each."""

    x: Any
    xb: Any
    expected: Any
    expected_b: Any


@dataclass
class Steps:
    """How one kind of export is saved and loaded back: ``save(path)`` writes it,
    ``reload(path)`` returns a function that runs it (or None, a problem or a reason
    recorded), ``label`` names what ran in the problems; ``inspect`` runs after the
    save, ``settle`` after the comparison (both may add to the result)."""

    label: str
    save: Callable[[str], None]
    reload: Callable[[str], Callable[[Any], Any] | None]
    inspect: Callable[[], None] | None = None
    settle: Callable[[], None] | None = None


def save_verified(stage: Any, steps: Steps, inputs: Inputs, checks: Checks,
                  result: dict[str, Any]) -> None:
    """stage → save → reload → run → compare → commit, for every model export.

    ``stage`` has ``path``, ``size()``, ``commit()`` and ``committed`` (a staged file,
    or the staged folder of an ONNX model and its external data). It is committed when
    the checks found no problem and either compared the outputs or could not run the
    model at all (``result["verified"]`` false: reported, exit 1)."""
    steps.save(stage.path)
    result["bytes"] = stage.size()
    if steps.inspect is not None:
        steps.inspect()
    run = steps.reload(stage.path)
    if run is not None:
        checks.outputs(steps.label, run, inputs.x, inputs.expected, inputs.xb,
                       inputs.expected_b, result)
    if steps.settle is not None:
        steps.settle()
    if checks.ok or (not result["verified"] and not checks.problems):
        stage.commit()
    result["written"] = stage.committed


def reloaded(checks: Checks, result: dict[str, Any], what: str,
             load: Callable[[], Any]) -> Callable[[Any], Any] | None:
    """The module ``load()`` returns, as a function run without gradients; None (and a
    problem) when it does not load."""
    import torch

    module = checks.run(what, load)
    result["reloaded"] = module is not None
    if module is None:
        return None

    def run(t: Any) -> Any:
        with torch.no_grad():
            return module(t)
    return run
