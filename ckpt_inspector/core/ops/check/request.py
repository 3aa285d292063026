"""What to check, as one typed request shared by the command line and the window:
:class:`CheckRequest` (``from_args`` / ``to_argv``), and :func:`run_check`, which carries it
out (importing torch only for a model torch builds)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckpt_inspector.core.errors import CheckpointError
from ckpt_inspector.core.ops.check.report import CheckReport
from ckpt_inspector.core.ops.check.state import CheckUsageError, Target


@dataclass(frozen=True)
class CheckRequest:
    """``ckpt-inspector check PATH (--arch NAME | --builder SPEC | --against OTHER)``."""

    path: str
    arch: str = ""
    builder: str = ""
    against: str = ""
    key: str | None = None  # None: the part that looks most like a model's weights
    against_key: str | None = None

    @property
    def model_label(self) -> str:
        """What the checkpoint is checked against, in a few words."""
        if self.arch:
            return f"{self.arch} (torchvision)"
        if self.builder:
            return self.builder
        return self.against

    @classmethod
    def from_args(cls, args: Any) -> CheckRequest:
        given = [n for n in ("arch", "builder", "against") if getattr(args, n, None)]
        if len(given) != 1:
            raise CheckUsageError("give one of --arch NAME, --builder pkg.mod:fn or "
                                  "--against OTHER")
        return cls(args.path, args.arch or "", args.builder or "", args.against or "",
                   args.key, getattr(args, "against_key", None))

    def to_argv(self) -> list[str]:
        """The command line (after ``ckpt-inspector``) that makes this check, as JSON."""
        argv = ["check", self.path]
        for flag, value in (("--arch", self.arch), ("--builder", self.builder),
                            ("--against", self.against), ("--key", self.key),
                            ("--against-key", self.against_key)):
            if value is not None and (value or flag in ("--key", "--against-key")):
                argv += [flag, value]
        return [*argv, "--json"]


def make_target(request: CheckRequest) -> Target:
    """The model to load into: built by torch on the meta device, or another checkpoint
    read by our readers (no torch)."""
    if request.arch:
        from ckpt_inspector.core.ops.check.models import arch_target

        return arch_target(request.arch)
    if request.builder:
        from ckpt_inspector.core.ops.check.models import builder_target

        return builder_target(request.builder)
    from ckpt_inspector.core.ops.check.emulate import CheckpointTarget
    from ckpt_inspector.core.ops.check.state import read_part
    from ckpt_inspector.core.ops.session import open_file

    try:
        ckpt = open_file(request.against)
    except CheckpointError as err:
        err.check_path = request.against  # type: ignore[attr-defined]  # which file
        raise
    other = read_part(ckpt, request.against_key, request.against)
    return CheckpointTarget(request.against, {i.key: i.spec for i in other.items
                                              if i.spec.shape is not None}, other.key)


def run_check(request: CheckRequest) -> CheckReport:
    """Read the checkpoint, make the target, check. Errors: :class:`CheckUsageError` (exit
    2), any other :class:`~ckpt_inspector.core.errors.CheckpointError` (unreadable, 3)."""
    from ckpt_inspector.core.ops.check.run import report
    from ckpt_inspector.core.ops.check.state import read_part
    from ckpt_inspector.core.ops.session import open_file

    sd = read_part(open_file(request.path), request.key)  # before torch is imported
    target = make_target(request)
    return report(request.path, sd, target, target.load(sd.items, sd.versions))
