"""Every format the reader knows, checked against what torch (or onnx, safetensors) loads."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

from ckpt_inspector.core import open_checkpoint
from ckpt_inspector.core.scan import scan
from ckpt_inspector.core.tensors import to_numpy, to_torch
from ckpt_inspector.core.tree import key_of


def tensor_map(ckpt, state_only=True):
    return {key_of(path): node.tensor for path, node in ckpt.tensors()
            if not state_only or node.in_state_dict()}


def values_map(ckpt):
    return {key_of(n.path()): n.value for n in ckpt.root.walk()
            if n.kind in ("scalar", "str", "value", "none") or n.value is not None}


def assert_matches(torch, infos, tensors, check_data=True):
    """Reader's keys, dtypes, shapes (and values) equal torch's tensors."""
    assert set(infos) == set(tensors)
    for key, t in tensors.items():
        info = infos[key]
        assert info.dtype == str(t.dtype).removeprefix("torch."), key
        assert info.shape == tuple(t.shape), key
        assert info.problem is None, (key, info.problem)
        if check_data:
            got = to_torch(info)
            assert got.dtype == t.dtype, key
            assert torch.equal(got, t.detach()), key


def test_one_tensor(torch, tensor_file):
    path, x = tensor_file
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-zip"
    [(p, node)] = list(ckpt.tensors())
    assert p == [] and key_of(p) == ""
    assert node.tensor.dtype == "float32" and node.tensor.shape == (3, 4)
    assert torch.equal(to_torch(node.tensor), x)
    assert scan(ckpt).verdict == "safe"


def test_dict_of_tensors(torch, tensors_file):
    path, data = tensors_file
    ckpt = open_checkpoint(path)
    assert_matches(torch, tensor_map(ckpt), data)
    assert scan(ckpt).verdict == "safe"


def test_whole_resnet18_keyed_like_state_dict(torch, resnet_full):
    path, model = resnet_full
    ckpt = open_checkpoint(path)
    assert ckpt.root.kind == "module"
    assert ckpt.root.type_name == "torchvision.models.resnet.ResNet"
    assert_matches(torch, tensor_map(ckpt), model.state_dict())
    layer = ckpt.root.children[[c.key for c in ckpt.root.children].index("layer1")]
    assert layer.kind == "module" and layer.type_name.endswith("Sequential")
    report = scan(ckpt)
    assert report.verdict == "needs-trust"
    assert "torchvision.models.resnet.ResNet" in report.globals
    assert "torch.nn.modules.conv.Conv2d" in report.globals


def test_resnet18_state_dict(torch, resnet_params):
    path, sd = resnet_params
    ckpt = open_checkpoint(path)
    assert ckpt.root.type_name == "collections.OrderedDict"
    assert_matches(torch, tensor_map(ckpt), sd)
    assert scan(ckpt).verdict == "safe"


def test_training_checkpoint(torch, training_ckpt):
    path, ckpt_obj = training_ckpt
    ckpt = open_checkpoint(path)
    loaded = torch.load(path, weights_only=True)
    expected = {f"model_state_dict.{k}": v for k, v in loaded["model_state_dict"].items()}
    for pid, state in loaded["optimizer_state_dict"]["state"].items():
        for name, t in state.items():
            expected[f"optimizer_state_dict.state.{pid}.{name}"] = t
    assert_matches(torch, tensor_map(ckpt), expected)
    values = values_map(ckpt)
    assert values["epoch"] == 7
    assert values["loss"] == pytest.approx(ckpt_obj["loss"])
    assert values["optimizer_state_dict.param_groups.0.lr"] == 0.001
    assert values["optimizer_state_dict.param_groups.0.betas"] == (0.9, 0.999)
    assert scan(ckpt).verdict == "safe"


def test_torchscript_trace(torch, jit_trace):
    path, traced = jit_trace
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torchscript"
    assert_matches(torch, tensor_map(ckpt), traced.state_dict())
    assert any(f.startswith("code/__torch__/") for f in ckpt.metadata["code files"])
    report = scan(ckpt)
    assert report.verdict == "needs-trust"
    assert any(f.code == "code" for f in report.findings)


def test_onnx_seed_export_with_external_data(torch, onnx_file):
    import onnx
    from onnx import numpy_helper

    ckpt = open_checkpoint(onnx_file)
    assert ckpt.format == "onnx"
    model = onnx.load(str(onnx_file))
    inits = {i.name: i for i in model.graph.initializer}
    infos = tensor_map(ckpt)
    assert set(infos) == set(inits)
    for name, init in inits.items():
        arr = numpy_helper.to_array(init, base_dir=str(onnx_file.parent))
        assert infos[name].shape == arr.shape
        assert np.array_equal(to_numpy(infos[name]), arr), name
    assert ckpt.metadata["opset_import"]["ai.onnx"] == model.opset_import[0].version
    assert [o["name"] for o in ckpt.metadata["outputs"]] == [o.name for o in model.graph.output]
    assert scan(ckpt).verdict == "safe"


def test_onnx_inline_initializers_and_io(torch, onnx_inline):
    import onnx
    from onnx import numpy_helper

    ckpt = open_checkpoint(onnx_inline)
    model = onnx.load(str(onnx_inline))
    infos = tensor_map(ckpt)
    for init in model.graph.initializer:
        assert np.array_equal(to_numpy(infos[init.name]), numpy_helper.to_array(init))
    [inp] = ckpt.metadata["inputs"]
    assert inp == {"name": "image", "dtype": "float32", "shape": ["batch", 3, 8, 8]}
    assert ckpt.metadata["outputs"][0]["name"] == "logits"
    assert ckpt.metadata["operators"]["Conv"] == 1


def test_safetensors_header_only(torch, safetensors_file):
    path, sd = safetensors_file
    ckpt = open_checkpoint(path)
    assert ckpt.format == "safetensors"
    assert ckpt.metadata["__metadata__"] == {"format": "pt", "source": "tests"}
    assert_matches(torch, tensor_map(ckpt), sd)
    assert scan(ckpt).verdict == "safe"


def test_legacy_dict_with_view(torch, legacy_dict):
    path, data = legacy_dict
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy"
    assert_matches(torch, tensor_map(ckpt), {k: v for k, v in data.items() if k != "step"})
    assert values_map(ckpt)["step"] == 3
    assert scan(ckpt).verdict == "safe"


def test_legacy_whole_model(torch, legacy_model):
    path, model = legacy_model
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy"
    assert ckpt.root.kind == "module"
    assert_matches(torch, tensor_map(ckpt), model.state_dict())
    assert scan(ckpt).verdict == "needs-trust"


def test_every_dtype(torch, dtypes_file):
    path, data = dtypes_file
    ckpt = open_checkpoint(path)
    infos = tensor_map(ckpt)
    assert set(infos) == set(data)
    for key, t in data.items():
        info = infos[key]
        assert info.dtype == str(t.dtype).removeprefix("torch."), key
        assert info.shape == tuple(t.shape)
        got = to_torch(info)
        assert got.dtype == t.dtype
        # compare bits: float8 and complex32 have no equality kernels everywhere
        assert torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))
    assert scan(ckpt).verdict == "safe"


def test_views_shared_storage_and_tied_parameters(torch, views_file):
    path, data = views_file
    ckpt = open_checkpoint(path)
    infos = tensor_map(ckpt)
    assert_matches(torch, infos, data)
    assert infos["transposed"].stride == (1, 10)
    assert infos["cols"].storage_offset == 3
    assert infos["row"].storage is infos["base"].storage
    assert infos["param"].is_parameter
    assert infos["tied"].storage is infos["param"].storage


def test_dataparallel_prefix(torch, dataparallel_file):
    path, sd = dataparallel_file
    ckpt = open_checkpoint(path)
    infos = tensor_map(ckpt)
    assert all(k.startswith("module.") for k in infos)
    assert_matches(torch, infos, sd)


def test_lightning_checkpoint(torch, lightning_file):
    path, obj = lightning_file
    ckpt = open_checkpoint(path)
    values = values_map(ckpt)
    assert values["global_step"] == 1200
    assert values["hyper_parameters.lr"] == 0.1
    assert values["pytorch-lightning_version"] == "2.4.0"
    infos = tensor_map(ckpt)
    for k, v in obj["state_dict"].items():
        assert infos[f"state_dict.{k}"].shape == tuple(v.shape)
    assert scan(ckpt).verdict == "safe"


def test_numpy_scalars_arrays_and_namespace(torch, numpy_namespace_file):
    path, data = numpy_namespace_file
    ckpt = open_checkpoint(path)
    values = values_map(ckpt)
    assert values["best_acc"] == 0.9375
    assert values["best_epoch"] == 41
    assert values["flag"] is True
    assert values["half"] == 0.25
    assert values["args.lr"] == 0.01
    assert values["args.arch"] == "resnet18"
    assert values["args.milestones"] == [30, 60]
    nodes = {key_of(n.path()): n for n in ckpt.root.walk()}
    assert nodes["best_acc"].type_name == "numpy.float64"
    assert nodes["args"].type_name == "argparse.Namespace"
    arr = nodes["class_weights"]
    assert arr.kind == "ndarray" and arr.tensor.shape == (2, 3)
    assert np.array_equal(to_numpy(arr.tensor), data["class_weights"])
    report = scan(ckpt)
    assert report.verdict == "needs-trust"
    assert "argparse.Namespace" in report.globals


def test_quantized(torch, quantized_file):
    path, data = quantized_file
    ckpt = open_checkpoint(path)
    infos = tensor_map(ckpt)
    assert infos["per_tensor"].dtype == "quint8"
    assert infos["per_tensor"].quantization == {"scheme": "per_tensor_affine", "scale": 0.1,
                                                "zero_point": 3}
    assert infos["per_channel"].quantization["scheme"] == "per_channel_affine"
    assert infos["per_channel"].quantization["axis"] == 0
    for key, t in data.items():
        got = to_torch(infos[key])
        assert torch.equal(got.int_repr(), t.int_repr()), key
        assert torch.equal(got.dequantize(), t.dequantize()), key
    assert scan(ckpt).verdict == "safe"


def test_saved_on_cuda(torch, cuda_file):
    path, _ = cuda_file
    ckpt = open_checkpoint(path)
    infos = tensor_map(ckpt)
    assert {t.device for t in infos.values()} == {"cuda:0"}
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert_matches(torch, infos, loaded)


def test_bare_pickle_with_tensor(torch, bare_pickle):
    path, data = bare_pickle
    ckpt = open_checkpoint(path)
    assert ckpt.format == "pickle"
    infos = tensor_map(ckpt)
    assert torch.equal(to_torch(infos["t"]), data["t"])
    values = values_map(ckpt)
    assert values["name"] == "run-1" and values["sizes"] == (3, 4)
    report = scan(ckpt)
    assert report.verdict == "needs-trust"  # plain pickle of a tensor nests a torch.load


def test_missing_storage_record_is_listed_as_damaged(torch, tensors_file, tmp_path):
    src, data = tensors_file
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(damaged, "w") as zout:
        for item in zin.infolist():
            if not item.filename.endswith("/data/0"):
                zout.writestr(item, zin.read(item))
    ckpt = open_checkpoint(damaged)
    infos = tensor_map(ckpt)
    assert set(infos) == set(data)
    broken = [k for k, t in infos.items() if t.problem]
    assert len(broken) == 1 and "missing" in infos[broken[0]].problem
    with pytest.raises(Exception, match="missing"):
        to_numpy(infos[broken[0]])


def test_reader_never_modifies_the_file(tensors_file, tmp_path):
    src, _ = tensors_file
    copy = tmp_path / "copy.pt"
    shutil.copy(src, copy)
    before = copy.read_bytes()
    open_checkpoint(copy)
    assert copy.read_bytes() == before


def test_shared_reference_explosion_is_built_once(tmp_path):
    """40 levels of [x, x] describe 2**40 entries in a few hundred bytes: past a budget,
    a repeated object is shown as a reference to where it was first shown."""
    import pickle

    value: object = [1]
    for _ in range(40):
        value = [value, value]
    path = tmp_path / "bomb.pkl"
    path.write_bytes(pickle.dumps(value, protocol=4))
    ckpt = open_checkpoint(path)
    assert any("same object as" in w for w in ckpt.warnings)
    assert sum(1 for _ in ckpt.root.walk()) <= 25_000  # the repeat budget + references


def test_cycles_become_cycle_nodes(tmp_path):
    import pickle

    a: list = [1]
    a.append(a)
    d: dict = {"self": None}
    d["self"] = d
    path = tmp_path / "cycle.pkl"
    path.write_bytes(pickle.dumps({"list": a, "dict": d}, protocol=2))
    ckpt = open_checkpoint(path)
    kinds = [n.kind for n in ckpt.root.walk()]
    assert kinds.count("cycle") == 2


def write_tar_checkpoint(torch, path, tensors: dict, extra: dict):
    """The pre-0.4 tar format, written by hand the way torch 0.3 wrote it."""
    import io
    import pickle
    import struct
    import tarfile

    storages, records = io.BytesIO(), io.BytesIO()
    pickle.dump(len(tensors), storages, protocol=2)
    pickle.dump(len(tensors), records, protocol=2)
    for i, t in enumerate(tensors.values()):
        t = t.contiguous()
        storage_type = getattr(torch, {torch.float32: "FloatStorage",
                                       torch.int64: "LongStorage"}[t.dtype])
        pickle.dump((1000 + i, "cpu", storage_type), storages, protocol=2)
        storages.write(struct.pack("<q", t.numel()) + t.numpy().tobytes())
        pickle.dump((i, 1000 + i, type(t)), records, protocol=2)
        records.write(struct.pack("<ii", t.dim(), 0))
        records.write(struct.pack(f"<{t.dim()}q", *t.shape))
        records.write(struct.pack(f"<{t.dim()}q", *t.stride()))
        records.write(struct.pack("<q", 0))
    pickle.dump([], storages, protocol=2)

    class Refs(pickle.Pickler):
        def persistent_id(self, obj):
            for i, t in enumerate(tensors.values()):
                if obj is t:
                    return str(i)
            return None

    main = io.BytesIO()
    Refs(main, protocol=2).dump({**tensors, **extra})
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, buf in (("sys_info", io.BytesIO(pickle.dumps({}))), ("pickle", main),
                          ("tensors", records), ("storages", storages)):
            info = tarfile.TarInfo(name)
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))


def test_pre_0_4_tar_format(torch, tmp_path):
    tensors = {"w": torch.randn(3, 4), "steps": torch.arange(5)}
    path = tmp_path / "old.pt"
    write_tar_checkpoint(torch, path, tensors, {"epoch": 2})
    loaded = torch.load(path, weights_only=False)  # our own file: checks the writer above
    assert torch.equal(loaded["w"], tensors["w"])
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy" and ckpt.metadata["container"].startswith("tar")
    assert_matches(torch, tensor_map(ckpt), tensors)
    assert values_map(ckpt)["epoch"] == 2
    assert scan(ckpt).verdict == "safe"


def test_pre_0_4_tar_format_with_a_payload(torch, tmp_path, marker):
    from support import Payload

    path = tmp_path / "old_evil.pt"
    write_tar_checkpoint(torch, path, {"w": torch.ones(2)},
                         {"hook": Payload(f"touch {marker}")})
    report = scan(open_checkpoint(path))
    assert report.verdict == "dangerous" and "posix.system" in report.globals


def test_torch_export_pt2(torch, pt2_file):
    path, program = pt2_file
    ckpt = open_checkpoint(path)
    assert ckpt.format == "pt2"
    infos = {k: v for k, v in tensor_map(ckpt).items() if not k.startswith("sample inputs")}
    assert_matches(torch, infos, dict(program.state_dict))
    assert ckpt.metadata["nodes"] > 0
    assert scan(ckpt).verdict == "safe"


@pytest.mark.parametrize("entry, words", [
    ('{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}', "malformed shape"),
    ('{"dtype":"F32","shape":[NaN],"data_offsets":[0,8]}', "malformed shape"),
    ('{"dtype":"F32","shape":[18446744073709551617],"data_offsets":[0,8]}',
     "malformed shape"),
    ('{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}', "malformed data_offsets"),
    ('{"dtype":"F32","shape":[2],"data_offsets":[0,8],}', "not valid JSON"),
])
def test_a_safetensors_header_that_is_not_strict_json_is_refused_like_the_library(
        tmp_path, entry, words):
    """The header is parsed strictly (orjson, as serde_json reads it); what that refuses
    gets the words of the one-by-one checks. The safetensors library refuses each too."""
    from safetensors import safe_open

    from ckpt_inspector.core.errors import CheckpointError

    header = ('{"w":' + entry + "}").encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(CheckpointError, match=words):
        open_checkpoint(str(path))
    with pytest.raises(Exception), safe_open(str(path), framework="np") as f:  # noqa: B017
        f.get_slice("w").get_shape()  # any refusal of the library's own
