"""What to export, as one typed request: :class:`ExportRequest`.

The command line makes one from its arguments (:meth:`ExportRequest.from_args`); the
window's export dialog makes one from its choices and runs ``ckpt-inspector export``
with :meth:`ExportRequest.to_argv`, so the options are spelled in one place.
:func:`run_export` carries a request out and returns an
:class:`~ckpt_inspector.core.ops.export.result.ExportResult`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ckpt_inspector.core.errors import ExportUsageError
from ckpt_inspector.core.ops.export.plan import KeyRules, check_device, make_plan, sources
from ckpt_inspector.core.ops.export.result import STATE_TARGETS, ExportResult
from ckpt_inspector.core.progress import Job
from ckpt_inspector.core.tree import Checkpoint

TARGETS = ("state_dict", "safetensors", "hf-sharded", "torchscript", "onnx", "pt2")
MODEL_SOURCES = ("auto", "pickled", "torchscript", "torchvision", "callable")
_BAD_SYNTAX = ("--rename, --metadata take A=B; --input-shape takes sizes ≥ 1 such as "
               "1,3,224,224")


@dataclass
class ExportRequest:
    path: str
    to: str
    output: str
    key: str | None = None  # None: the part that looks most like model weights
    strip_prefix: list[str] = field(default_factory=list)
    add_prefix: str = ""
    rename: list[tuple[str, str]] = field(default_factory=list)  # (regex, replacement)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    dtype: str | None = None
    device: str = "cpu"
    metadata: dict[str, str] = field(default_factory=dict)
    arch: str = "auto"
    num_classes: int | None = None
    builder: str = ""
    model_source: str = "auto"
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"
    method: str = "trace"
    exporter: str = "dynamo"
    opset: int | None = None
    dynamic_batch: bool = False
    input_names: list[str] = field(default_factory=lambda: ["input"])
    output_names: list[str] = field(default_factory=lambda: ["output"])
    tolerance: float = 1e-4
    rtol: float = 1e-5
    trust: bool = False
    run_code: bool = False
    allow_dangerous: bool = False
    overwrite: bool = False
    verify: bool = True
    max_shard_size: int | None = None  # hf-sharded: bytes per shard (None: 5GB)

    @property
    def rules(self) -> KeyRules:
        return KeyRules(strip_prefixes=list(self.strip_prefix), add_prefix=self.add_prefix,
                        renames=list(self.rename), include=list(self.include),
                        exclude=list(self.exclude))

    @property
    def is_state_dict(self) -> bool:
        return self.to in STATE_TARGETS

    @classmethod
    def from_args(cls, args: Any) -> ExportRequest:
        """From the parsed arguments of ``ckpt-inspector export``; a malformed option, or
        one that needs another, raises :class:`ExportUsageError`."""
        try:
            rename = [tuple(r.split("=", 1)) for r in args.rename]
            if any(len(r) != 2 for r in rename):
                raise ValueError
            metadata = dict(m.split("=", 1) for m in args.metadata)
        except ValueError:
            raise ExportUsageError(_BAD_SYNTAX) from None
        shape = parse_shape(args.input_shape)
        request = cls(
            args.path, args.to, args.output, args.key, list(args.strip_prefix),
            args.add_prefix, rename, list(args.include), list(args.exclude),  # type: ignore[arg-type]
            args.dtype, args.device, metadata, args.arch, args.num_classes, args.builder,
            args.model_source, shape, args.input_dtype, args.method, args.exporter,
            args.opset, args.dynamic_batch, args.input_names.split(","),
            args.output_names.split(","), args.tolerance, args.rtol, args.trust,
            args.run_code, args.allow_dangerous, args.overwrite, not args.no_verify)
        size = getattr(args, "max_shard_size", None)
        if size is not None:
            from ckpt_inspector.core.ops.export.sharded import parse_size

            request.max_shard_size = parse_size(size)
        request.check()
        return request

    def check(self) -> None:
        """The options that need another, and the device's name."""
        if self.allow_dangerous and not self.run_code:
            raise ExportUsageError("--allow-dangerous needs --run-code too")
        if self.run_code and not self.trust:
            raise ExportUsageError("--run-code needs --trust too")
        check_device(self.device)
        if self.max_shard_size is not None:
            if self.to != "hf-sharded":
                raise ExportUsageError("--max-shard-size goes with --to hf-sharded")
            if not isinstance(self.max_shard_size, int) or self.max_shard_size < 1:
                raise ExportUsageError("--max-shard-size must be at least 1 byte")

    def to_argv(self) -> list[str]:
        """``export PATH --to … -o …`` and every option that is not its default."""
        argv = ["export", self.path, "--to", self.to, "-o", self.output]
        if self.key is not None:
            argv += ["--key", self.key]
        argv += _repeated("--strip-prefix", self.strip_prefix)
        argv += ["--add-prefix", self.add_prefix] if self.add_prefix else []
        argv += _repeated("--rename", [f"{a}={b}" for a, b in self.rename])
        argv += _repeated("--include", self.include) + _repeated("--exclude", self.exclude)
        argv += _repeated("--metadata", [f"{k}={v}" for k, v in self.metadata.items()])
        argv += _options(self, _VALUED)
        if self.input_shape is not None:
            argv += ["--input-shape", ",".join(str(s) for s in self.input_shape)]
        if self.input_names != ["input"]:
            argv += ["--input-names", ",".join(self.input_names)]
        if self.output_names != ["output"]:
            argv += ["--output-names", ",".join(self.output_names)]
        argv += [flag for flag, name in _FLAGS if getattr(self, name)]
        return argv + ([] if self.verify else ["--no-verify"])


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``1,3,224,224`` as a shape (None for an empty text); sizes must be ≥ 1."""
    if not text:
        return None
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise ExportUsageError(_BAD_SYNTAX) from None
    if any(s < 1 for s in shape):
        raise ExportUsageError(_BAD_SYNTAX)
    return shape


# (option, field) pairs written as "--option value" when the value is not the default
_VALUED = (("--dtype", "dtype"), ("--device", "device"), ("--arch", "arch"),
           ("--num-classes", "num_classes"), ("--builder", "builder"),
           ("--model-source", "model_source"), ("--input-dtype", "input_dtype"),
           ("--method", "method"), ("--exporter", "exporter"), ("--opset", "opset"),
           ("--tolerance", "tolerance"), ("--rtol", "rtol"),
           ("--max-shard-size", "max_shard_size"))
_FLAGS = (("--dynamic-batch", "dynamic_batch"), ("--trust", "trust"),
          ("--run-code", "run_code"), ("--allow-dangerous", "allow_dangerous"),
          ("--overwrite", "overwrite"))


def _repeated(option: str, values: list[str]) -> list[str]:
    return [a for v in values for a in (option, v)]


def _options(request: ExportRequest, pairs: tuple[tuple[str, str], ...]) -> list[str]:
    defaults = ExportRequest("", "", "")
    out = []
    for option, name in pairs:
        value = getattr(request, name)
        if value is not None and value != getattr(defaults, name):
            out += [option, repr(value) if isinstance(value, float) else str(value)]
    return out


def run_export(request: ExportRequest, ckpt: Checkpoint) -> Job[ExportResult]:
    """Carry out ``request`` on ``ckpt`` (the file at ``request.path``, opened); yields
    progress and returns the result. Errors as the writers and the model export raise
    them (:class:`ExportUsageError`, :class:`~ckpt_inspector.core.errors.ExportError`,
    :class:`~ckpt_inspector.core.ops.torch_load.TrustError`...)."""
    key = request.key
    if key is None:
        found = sources(ckpt)
        key = found[0].key if found else ""
    if request.is_state_dict:
        return (yield from _state_dict(request, ckpt, key))
    return (yield from _model(request, ckpt, key))


def _state_dict(request: ExportRequest, ckpt: Checkpoint, key: str) -> Job[ExportResult]:
    from ckpt_inspector.core.ops.export.writers import export_state_dict

    plan = make_plan(ckpt, key, request.rules, request.dtype, request.device,
                     "pt" if request.to == "state_dict" else "safetensors", request.metadata)
    if request.to == "hf-sharded":
        from ckpt_inspector.core.ops.export.sharded import export_sharded

        written = yield from export_sharded(plan, request.output, request.max_shard_size,
                                            request.overwrite, verify=request.verify)
    else:
        written = yield from export_state_dict(plan, request.output, request.overwrite,
                                               verify=request.verify)
    preview = plan.preview()
    del preview["keys"]
    preview["tensor_bytes"] = preview.pop("bytes")
    whole = "(whole model)" if os.path.isdir(request.path) else "(whole file)"
    return ExportResult.from_json({"target": request.to, "source": key or whole,
                                   **preview, **written})


def _model(request: ExportRequest, ckpt: Checkpoint, key: str) -> Job[ExportResult]:
    from ckpt_inspector.core.ops.export.model import export_model
    from ckpt_inspector.core.ops.export.model_source import ModelSource
    from ckpt_inspector.core.ops.torch_load import TrustError

    kind = request.model_source
    if not request.trust and kind in ("pickled", "torchscript"):
        raise TrustError("loading the file's own model takes --trust")
    if kind == "auto" and request.trust and not request.builder and request.arch == "auto":
        kind = "torchscript" if ckpt.format == "torchscript" else "pickled"
    source = ModelSource(kind, request.arch, request.num_classes, request.builder, key,
                         request.rules, request.run_code, request.allow_dangerous,
                         trust=request.trust)
    result = yield from export_model(
        request.path, request.to, request.output, source, device=request.device,
        input_shape=request.input_shape, input_dtype=request.input_dtype,
        method=request.method, exporter=request.exporter, opset=request.opset,
        dynamic_batch=request.dynamic_batch, input_names=request.input_names,
        output_names=request.output_names, tolerance=request.tolerance, rtol=request.rtol,
        overwrite=request.overwrite)
    return ExportResult.from_json(result)
