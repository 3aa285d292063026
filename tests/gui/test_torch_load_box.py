"""The summary panel: what a ``safe`` verdict means, and the torch.load box (will
``torch.load(path, map_location="cpu")`` work, per format and device; the fix, copied by its
link)."""

from PySide6.QtCore import QUrl
from PySide6.QtGui import QGuiApplication

from ckpt_inspector.core.ops.session import load_file
from ckpt_inspector.gui.html.checkpoint import safe_meaning, summary_html
from ckpt_inspector.gui.html.torch_load import COPY_FIX_URL

from support import open_and_wait


def _summary(path) -> str:
    from PySide6.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(summary_html(load_file(str(path))))
    return doc.toPlainText().replace("\u200b", "")


def test_the_verdict_says_nothing_of_torch_load():
    for fmt in ("torch-zip", "safetensors", "onnx", "gguf", "torchscript", "dcp"):
        assert "torch.load" not in safe_meaning(fmt), fmt
    assert "TorchScript code" in safe_meaning("torchscript")


def test_a_torch_file_loads(tensors_file):
    text = _summary(tensors_file[0])
    assert "SAFE — only data" in text
    assert "torch.load(path) works: weights_only=True" in text
    assert "mmap=True works" in text and "Copy" not in text


def test_a_gpu_saved_file_needs_map_location(cuda_file):
    text = _summary(cuda_file[0])
    assert "saved on cuda:0: this is for map_location='cpu'" in text


def test_formats_torch_load_does_not_read_say_what_does(onnx_inline, jit_trace,
                                                       safetensors_file):
    onnx = _summary(onnx_inline)
    assert "Not a torch.load file: an ONNX model" in onnx and "onnx.load(path)" in onnx
    script = _summary(jit_trace[0])
    assert "torch.load refuses a TorchScript archive" in script
    assert "torch.jit.load(path, map_location='cpu')" in script
    st = _summary(safetensors_file[0])  # model.safetensors: torch.load hands it over
    assert "torch.load(path) works" in st and "safetensors.torch.load_file" in st


def test_a_dangerous_file_says_do_not_load(payload_files):
    text = _summary(payload_files["torch-zip"])
    assert "Do not load this file with torch." in text
    assert "No fix is offered" in text and "Copy" not in text
    assert "posix.system" in text


def test_the_copy_link_copies_the_fix(qtbot, window, numpy_namespace_file):
    view = open_and_wait(qtbot, window, numpy_namespace_file[0])
    text = view.summary.toPlainText()
    assert "torch.load(path) fails: weights_only=True refuses these 5." in text
    fix = view.torch_load_fix()
    assert fix and "argparse.Namespace" in fix and "numpy.dtypes.Float64DType" in fix
    assert "torch.serialization.add_safe_globals([" in text and "Copy" in text
    QGuiApplication.clipboard().clear()
    view.summary.anchorClicked.emit(QUrl(COPY_FIX_URL))
    assert QGuiApplication.clipboard().text() == fix


def test_a_safe_verdict_with_a_missing_file_says_it_is_incomplete(tmp_path):
    import torch

    from shards import save_sharded, state_dict

    weight_map = save_sharded(torch, tmp_path / "m", state_dict(torch))
    gone = sorted(set(weight_map.values()))[1]
    (tmp_path / "m" / gone).unlink()
    loaded = load_file(str(tmp_path / "m"))
    assert loaded.report.verdict == "safe" and loaded.report.unscanned == [gone]
    html = summary_html(loaded)
    assert "incomplete: 1 file not scanned" in html and gone in html
    text = _summary(tmp_path / "m")  # each file said, the missing one too
    assert "torch.load fails on 1 of its 3 files" in text
    assert f"{gone}\nfails (the file is missing)" in text
