"""The names of export outputs: which extension each target is known by."""

from __future__ import annotations

from ckpt_inspector.core.ops.export.names import fits, name_warning, with_extension


def test_each_target_keeps_its_own_extensions_and_replaces_others():
    assert with_extension("safetensors", "/a/demo_sd.pt") == "/a/demo_sd.safetensors"
    assert with_extension("onnx", "/a/demo.safetensors") == "/a/demo.onnx"
    assert with_extension("torchscript", "/a/demo.onnx") == "/a/demo.pt"
    assert with_extension("torchscript", "/a/demo.pth") == "/a/demo.pth"
    assert with_extension("state_dict", "/a/demo.ckpt") == "/a/demo.ckpt"
    assert with_extension("pt2", "/a/DEMO.PT") == "/a/DEMO.pt2"
    assert with_extension("hf-sharded", "/a/demo.safetensors") == "/a/demo"
    assert with_extension("hf-sharded", "/a/demo_sharded") == "/a/demo_sharded"
    assert with_extension("safetensors", "/a/model.v2") == "/a/model.v2.safetensors"
    assert with_extension("onnx", "/a/weights") == "/a/weights.onnx"
    assert fits("state_dict", "x.PTH") and not fits("safetensors", "x.pt")


def test_a_name_of_another_format_gets_one_sentence():
    text = name_warning("safetensors", "/out/x.pt")
    assert text.startswith("x.pt: a safetensors file named .pt;") and ".safetensors" in text
    assert "\n" not in text
    assert name_warning("safetensors", "/out/x.safetensors") == ""
    assert name_warning("torchscript", "/out/x.pt") == ""
    assert "without an extension" in name_warning("onnx", "/out/model")
    assert "like a single file" in name_warning("hf-sharded", "/out/model.safetensors")
    assert name_warning("hf-sharded", "/out/model") == ""
