"""What the window's Security box says a ``safe`` verdict means, per format and device."""

from ckpt_inspector.gui.html.checkpoint import safe_meaning


def test_torch_formats_say_torch_load_accepts_them():
    assert "torch.load(weights_only=True) accepts it" in safe_meaning("torch-zip", [], {"cpu": 3})
    many = [{"path": "a.bin", "format": "torch-zip"}, {"path": "b.bin", "format": "torch-zip"},
            {"path": "pytorch_model.bin.index.json", "format": "hf-index"}]
    assert "accepts each file" in safe_meaning("hf-sharded", many, {"cpu": 3})


def test_a_gpu_saved_file_needs_map_location():
    text = safe_meaning("torch-zip", [], {"cuda:0": 2, "cpu": 1})
    assert "cuda:0" in text and "map_location='cpu'" in text


def test_formats_torch_load_cannot_read_do_not_claim_it():
    for fmt, files in [("safetensors", []), ("onnx", []), ("gguf", []),
                       ("hf-sharded", [{"path": "m-1.safetensors", "format": "safetensors"},
                                       {"path": "m.index.json", "format": "hf-index"}])]:
        text = safe_meaning(fmt, files, {"cpu": 1})
        assert "accepts" not in text and "torch.load does not read" in text, fmt
    assert "torch.distributed.checkpoint" in safe_meaning(
        "dcp", [{"path": "__0_0.distcp", "format": "distcp"}], {"cpu": 1})



def test_a_safe_verdict_with_a_missing_file_says_it_is_incomplete(tmp_path):
    import torch

    from ckpt_inspector.core.ops.session import load_file
    from ckpt_inspector.gui.html.checkpoint import summary_html

    from shards import save_sharded, state_dict

    weight_map = save_sharded(torch, tmp_path / "m", state_dict(torch))
    gone = sorted(set(weight_map.values()))[1]
    (tmp_path / "m" / gone).unlink()
    loaded = load_file(str(tmp_path / "m"))
    assert loaded.report.verdict == "safe" and loaded.report.unscanned == [gone]
    html = summary_html(loaded)
    assert "incomplete: 1 file not scanned" in html and gone in html
