"""What loading a file with torch asks first (core/ops/torch_load.consent): no torch, no Qt."""

from __future__ import annotations

from ckpt_inspector.core.findings import Finding
from ckpt_inspector.core.ops.torch_load import consent
from ckpt_inspector.core.scan import ScanReport
from ckpt_inspector.core.tree import Checkpoint, Node


def ckpt(fmt: str = "torch-zip", runs_code: str | None = None) -> Checkpoint:
    return Checkpoint("/some/where/model.pt", fmt, Node("dict"), runs_code=runs_code)


def report(verdict: str, *names: str, severity: str = "needs-trust") -> ScanReport:
    return ScanReport(verdict, [Finding(severity, "import", f"imports {n}", name=n)
                                for n in names])


def test_a_safe_file_needs_nothing():
    c = consent(report("safe"), ckpt())
    assert c.questions == () and c.flags == ()


def test_torch_nn_classes_take_one_question_and_no_flag():
    c = consent(report("needs-trust", "torch.nn.modules.linear.Linear",
                       "torchvision.models.resnet.ResNet"), ckpt())
    assert c.flags == () and len(c.questions) == 1
    q = c.questions[0]
    assert q.title == "Load with torch" and q.accept == "Load"
    assert "model.pt needs these torch.nn / torchvision classes" in q.text
    assert "torchvision.models.resnet.ResNet" in q.text


def test_other_imports_take_run_code():
    c = consent(report("needs-trust", "mylib.Net", "torch.nn.modules.linear.Linear"), ckpt(),
                name="custom.pt")
    assert c.flags == ("--run-code",)
    (q,) = c.questions
    assert q.accept == "Run its code" and "Loading custom.pt runs code" in q.text
    assert "mylib.Net" in q.text


def test_torchscript_always_asks_to_run_code():
    c = consent(report("safe"), ckpt("torchscript", runs_code="its forward()"))
    assert c.flags == ("--run-code",) and "its forward()" in c.questions[0].text


def test_a_dangerous_file_asks_twice_for_both_overrides():
    r = ScanReport("dangerous", [Finding("needs-trust", "import", "x", name="a.B"),
                                 Finding("dangerous", "call", "calls os.system")])
    c = consent(r, ckpt())
    assert c.flags == ("--run-code", "--allow-dangerous")
    assert [q.accept for q in c.questions] == ["Continue…", "Run it anyway"]
    assert "model.pt is dangerous: calls os.system." in c.questions[0].text
