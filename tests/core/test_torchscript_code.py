"""TorchScript archives: the code torch.jit.load runs is never run here, but code that
reaches the file system when it runs is named, and makes the file dangerous."""

from __future__ import annotations

import subprocess
import sys

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.scan import scan


def _writer(torch, target: str, path) -> None:
    """A scripted module whose __setstate__ (run by torch.jit.load) creates ``target``."""

    class Writes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.zeros(2)
            self.target = target

        @torch.jit.export
        def __getstate__(self):
            return (self.w, self.training, self.target)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, bool, str]):
            self.w = state[0]
            self.training = state[1]
            self.target = state[2]
            t = torch.from_file(state[2], True, 4, dtype=torch.uint8)
            self.w = state[0] + t.float().sum() * 0

        def forward(self, x):
            return x + self.w

    torch.jit.save(torch.jit.script(Writes()), str(path))


def test_code_that_creates_a_file_at_load_is_dangerous(torch, tmp_path, marker):
    """Was (red team): a scripted __setstate__ calling torch.from_file(path, True, n) (which
    creates the file) made the archive only needs-trust, like any TorchScript."""
    live, ran = tmp_path / "live.pt", tmp_path / "ran"
    _writer(torch, str(ran), live)
    subprocess.run([sys.executable, "-c", "import sys, torch; torch.jit.load(sys.argv[1])",
                    str(live)], capture_output=True, timeout=120)
    assert ran.exists(), "the payload is live: torch.jit.load creates the file"
    path = tmp_path / "writes.pt"
    _writer(torch, str(marker), path)
    assert not marker.exists()  # saving does not run __setstate__
    report = scan(open_checkpoint(str(path)))
    assert report.verdict == "dangerous"
    found = [f for f in report.findings if f.code == "script-file-access"]
    assert found and found[0].member.endswith(".py") and "from_file" in found[0].message


def test_a_call_broken_across_lines_is_found_too(tmp_path):
    """Found by review: ``from_file``, a line break, then ``(`` is valid TorchScript and
    escaped the pattern."""
    from types import SimpleNamespace

    from ckpt_inspector.core.formats import torchscript

    archive = SimpleNamespace(label="", ckpt=SimpleNamespace(findings=[]))
    torchscript._file_access(archive, "code/__torch__.py",
                             "def __setstate__(self, s):\n  t = torch.from_file\n  (s[2])\n")
    assert [f.code for f in archive.ckpt.findings] == ["script-file-access"]


def test_ordinary_scripted_code_only_needs_trust(jit_trace):
    report = scan(open_checkpoint(str(jit_trace[0])))
    assert report.verdict == "needs-trust"
    assert "script-file-access" not in {f.code for f in report.findings}
