"""What an export did: :class:`ExportResult`, the one record the command line prints
(``--json``, or the text report) and the window's export dialog shows.

The dialog reads it back from the child's ``--progress`` result line
(:meth:`ExportResult.from_json`); both the text report and the dialog's table come
from :meth:`ExportResult.rows`, so a figure is worded in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ckpt_inspector.core.summary import counted, human_bytes

STATE_TARGETS = ("state_dict", "safetensors", "hf-sharded")

# the order of the keys in the JSON result (what `export --json` has always printed)
_STATE_ORDER = ("target", "source", "tensors", "excluded", "renamed", "not_cast",
                "dequantized", "tensor_bytes", "path", "files", "max_shard_size", "oversized",
                "bytes", "verified",
                "bit_exact", "cast",
                "max_abs_diff", "problems", "cast_reference", "torch_load", "torch_error",
                "passed", "written", "status")
_MODEL_ORDER = ("target", "model", "input_shape", "input_dtype", "tolerance", "rtol",
                "verified", "dynamic_batch", "method", "exporter", "files", "bytes",
                "reloaded", "checker", "opset", "onnxruntime", "dynamic_batch_checked",
                "dynamic_batch_size", "written", "seconds", "path", "max_abs_diff",
                "problems", "passed", "status")


@dataclass
class Row:
    """One figure of a result: ``label`` and ``value`` for the dialog's table, ``line``
    for the text report (None: not printed there); ``level`` ``danger`` for a failure."""

    label: str
    value: str
    line: str | None = None
    level: str = ""


@dataclass
class ExportResult:
    target: str
    path: str
    bytes: int = 0
    written: bool = False
    passed: bool = False
    verified: bool = True
    status: str = ""
    problems: list[str] | None = None  # None: not checked (--no-verify)
    max_abs_diff: float | None = None
    # state_dict and safetensors
    source: str | None = None
    tensors: int | None = None
    excluded: int | None = None
    renamed: int | None = None
    not_cast: int | None = None
    tensor_bytes: int | None = None
    bit_exact: int | None = None
    cast: int | None = None
    cast_reference: str | None = None
    torch_load: bool | None = None
    torch_error: str | None = None
    # TorchScript, ONNX, .pt2
    model: str | None = None
    input_shape: list[int] | None = None
    input_dtype: str | None = None
    tolerance: float | None = None
    rtol: float | None = None
    dynamic_batch: bool | None = None
    method: str | None = None
    exporter: str | None = None
    files: list[str] | None = None
    reloaded: bool | None = None
    checker: bool | None = None
    opset: int | None = None
    onnxruntime: str | None = None
    dynamic_batch_checked: bool | None = None
    dynamic_batch_size: int | None = None
    seconds: float | None = None
    # tensors stored in blocks written as their values: {"tensors", "to", "dtypes"}
    dequantized: dict[str, Any] | None = None
    # hf-sharded
    max_shard_size: int | None = None
    oversized: int | None = None  # tensors larger than max_shard_size, each in its own shard
    # keys given as null (kept in the JSON), and keys this version does not know
    given: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_state_dict(self) -> bool:
        return self.target in STATE_TARGETS

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportResult:
        """From what :meth:`to_json` made (an ``"event"`` key, as in a progress result
        line, is dropped)."""
        names = {f.name for f in fields(cls)} - {"given", "extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names and k != "event"}
        result = cls(**known, given=frozenset(known), extra=extra)
        if not result.status:
            result.status = result.settled_status()
        return result

    def settled_status(self) -> str:
        """``passed``, ``not verified`` (written, but not read back or not run) or
        ``failed``."""
        if self.is_state_dict:
            return ("passed" if self.passed and self.verified else
                    "not verified" if self.passed else "failed")
        return ("passed" if self.passed else
                "not verified" if not self.verified and self.written else "failed")

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``export --json`` prints, its keys in their usual order."""
        out: dict[str, Any] = {}
        for name in _STATE_ORDER if self.is_state_dict else _MODEL_ORDER:
            value = getattr(self, name)
            if value is not None or name in self.given:
                out[name] = value
        out.update(self.extra)
        return out

    # -- the figures, worded once ---------------------------------------------------------
    def rows(self) -> list[Row]:
        """The figures, in order: the file, then the checks, then each problem."""
        rows = [Row("Folder" if self.target == "hf-sharded" else "File", self.path),
                Row("Size" if self.written else "Size (not written)", human_bytes(self.bytes))]
        rows += self._state_rows() if self.is_state_dict else self._model_rows()
        rows += [Row("Problem", p, f"PROBLEM: {p}", "danger") for p in self.problems or []]
        return rows

    def _state_rows(self) -> list[Row]:
        left = (f", {self.excluded} left out" if self.excluded else "") + \
            (f", {self.renamed} renamed" if self.renamed else "")
        rows = [Row("Tensors", f"{self.tensors:,} from {self.source}{left}",
                    f"{counted(self.tensors or 0, 'tensor')} from "
                    f"{_from(self.source)}{left}")]
        if self.target == "hf-sharded" and self.files:
            shards = [f for f in self.files if not f.endswith(".json")]
            limit = f"limit {_decimal(self.max_shard_size)}" if self.max_shard_size else ""
            if limit and self.oversized:
                limit += (f"; {counted(self.oversized, 'tensor')} larger than it in "
                          f"{'its' if self.oversized == 1 else 'their'} own shard")
            what = (f"{len(shards)} shards ({limit}) and {self.files[-1]}" if len(shards) > 1
                    else f"{shards[0]} (one shard, {limit}: no index)")
            rows.append(Row("Files", what, f"files: {what}"))
        if self.dequantized:
            d = self.dequantized
            what = (f"{counted(d['tensors'], 'tensor')} dequantized to {d['to']}: "
                    + ", ".join(d["dtypes"]))
            rows.append(Row("Dequantized", what, what))
        if self.verified is False:
            return [*rows, Row("Read back", "no (--no-verify)", "not read back (--no-verify)")]
        back = f"{self.bit_exact:,} bit-exact" + (
            f", {self.cast:,} cast (largest difference {self.max_abs_diff:.3g})"
            if self.cast else "")
        rows.append(Row("Read back", back, f"read back: {back}"))
        if "torch_load" in self.given:
            label = "torch.load(weights_only=True)"
            rows.append(Row(label, "ok" if self.torch_load else str(self.torch_error or ""),
                            f"{label}: " + ("ok" if self.torch_load
                                            else f"FAILED: {self.torch_error}"),
                            "" if self.torch_load else "danger"))
        return rows

    def _model_rows(self) -> list[Row]:
        example = f"{self.input_dtype} {self.input_shape}"
        rows = [Row("Model", str(self.model)),
                Row("Example input", example, f"model: {self.model}; input {example}")]
        if self.max_abs_diff is not None:
            run = (f"max abs difference {self.max_abs_diff:.3g} (tolerance "
                   f"{self.tolerance:g} + {self.rtol or 0:g}·|value|)")
            rows.append(Row("Reloaded and run", run, f"reloaded and run: {run}"))
        if self.dynamic_batch:
            sizes = f"batch {self.input_shape[0]} and {self.dynamic_batch_size or 2}"
            ok = bool(self.dynamic_batch_checked)
            rows.append(Row("Dynamic batch", f"{sizes}: " + ("ok" if ok else "failed"),
                            f"dynamic batch: run at {sizes}: " + ("ok" if ok else "FAILED"),
                            "" if ok else "danger"))
        if self.onnxruntime:
            rows.append(Row("onnxruntime", str(self.onnxruntime),
                            f"onnxruntime: {self.onnxruntime}; onnx.checker: "
                            + ("ok" if self.checker else "FAILED")
                            + (f"; opset {self.opset}" if self.opset else "")))
        if self.checker is not None:
            rows.append(Row("onnx.checker", "ok" if self.checker else "failed"))
        if self.opset:
            rows.append(Row("Opset", str(self.opset)))
        if self.files and len(self.files) > 1:
            listed = ", ".join(self.files)
            rows.append(Row("Files", listed, f"files: {listed} (the model reads its weights "
                                             "from the others: keep them in one folder)"))
        return rows

    def text(self) -> str:
        """The text report of ``ckpt-inspector export``."""
        if self.written:
            lines = [f"wrote {self.path} ({human_bytes(self.bytes)})"]
        else:
            lines = [f"NOT written: {self.path} (the export did not pass its checks; any "
                     "file already there is unchanged)"]
        lines += [f"  {row.line}" for row in self.rows() if row.line is not None]
        if self.is_state_dict and self.verified is False:
            return "\n".join(lines)
        if self.passed and self.verified:
            lines.append("verification PASSED")
        elif self.status == "not verified":
            lines.append("verification NOT DONE: the model was not run (install "
                         "onnxruntime); exit status 1")
        else:
            lines.append("verification FAILED")
        return "\n".join(lines)


def _from(source: Any) -> str:
    """``(whole file)`` reads as "the whole file" in a sentence."""
    text = str(source)
    return text[1:-1].replace("whole", "the whole") if text in ("(whole file)",
                                                                 "(whole model)") else text


def _decimal(n: int) -> str:
    """A size in the decimal units of ``--max-shard-size`` (5 GB, 500 MB)."""
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= factor:
            return f"{n / factor:g} {unit}"
    return f"{n:,} B"
