"""Checkpoint files made with torch inside the test session: nothing binary is checked in.

Each fixture returns the path of a file written the way users write them (the
seed documents' cases and the formats the reader supports), plus, where the
tests compare against it, the object that was saved.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

from support import Payload, TinyNet

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# Tests never write into the user's real config, cache or data folders: this session and
# every child it starts (the CLI, torch children) get their own, removed at exit. The GUI
# tests also switch Qt's QStandardPaths to test mode (tests/gui/conftest.py).
_HOME = tempfile.mkdtemp(prefix="ckpt-inspector-tests-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for _name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
    os.environ[_name] = os.path.join(_HOME, _name.split("_")[1].lower())

MARKER_NAME = "PWNED-marker"
_CACHES = itertools.count()


@pytest.fixture(autouse=True)
def remote_cache_per_test(monkeypatch):
    """Each test (and the CLI it starts) has its own disk cache of remote structure, made
    only when written: a loopback port reused by a later test never finds another's."""
    monkeypatch.setenv("CKPT_INSPECTOR_CACHE_DIR",
                       os.path.join(_HOME, "remote-cache", str(next(_CACHES))))
    monkeypatch.delenv("CKPT_INSPECTOR_NO_CACHE", raising=False)


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpts")


@pytest.fixture(scope="session")
def torch():
    import torch

    torch.manual_seed(0)
    return torch


@pytest.fixture(scope="session")
def resnet18(torch):
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.eval()
    return model


# -- the seed documents' cases -----------------------------------------------------------
@pytest.fixture(scope="session")
def tensor_file(torch, files):
    x = torch.rand(3, 4)
    path = files / "tensor.pt"
    torch.save(x, path)
    return path, x


@pytest.fixture(scope="session")
def tensors_file(torch, files):
    data = {"x": torch.rand(3, 4), "y": torch.ones(2, 2), "z": torch.zeros(1, 5)}
    path = files / "tensors.pt"
    torch.save(data, path)
    return path, data


@pytest.fixture(scope="session")
def resnet_full(torch, resnet18, files):
    path = files / "resnet18_full.pth"
    torch.save(resnet18, path)
    return path, resnet18


@pytest.fixture(scope="session")
def resnet_params(torch, resnet18, files):
    path = files / "resnet18_params.pth"
    torch.save(resnet18.state_dict(), path)
    return path, resnet18.state_dict()


@pytest.fixture(scope="session")
def training_ckpt(torch, files):
    model = TinyNet.make(torch)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    loss = torch.nn.CrossEntropyLoss()(model(torch.randn(2, 3, 8, 8)), torch.tensor([1, 2]))
    loss.backward()
    optimizer.step()
    checkpoint = {
        "epoch": 7,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": loss.item(),
    }
    path = files / "model.ckpt"
    torch.save(checkpoint, path)
    return path, checkpoint


@pytest.fixture(scope="session")
def jit_trace(torch, resnet18, files):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(resnet18, torch.rand(1, 3, 224, 224))
    path = files / "model_traced.pt"
    traced.save(str(path))
    return path, traced


@pytest.fixture(scope="session")
def onnx_file(torch, resnet18, files):
    """The seed's call: ``torch.onnx.export(model, input, "model.onnx")`` (dynamo exporter)."""
    path = files / "onnx_dynamo" / "model.onnx"
    path.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(resnet18, torch.randn(1, 3, 224, 224), str(path))
    return path


@pytest.fixture(scope="session")
def onnx_inline(torch, files):
    """A small model from the TorchScript-based exporter: initializers inline as raw_data."""
    model = TinyNet.make(torch).eval()
    path = files / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, 8, 8), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}})
    return path


@pytest.fixture(scope="session")
def safetensors_file(torch, resnet18, files):
    from safetensors.torch import save_file

    path = files / "model.safetensors"
    sd = {k: v.contiguous() for k, v in resnet18.state_dict().items()}
    save_file(sd, str(path), metadata={"format": "pt", "source": "tests"})
    return path, sd


# -- more of what users meet ---------------------------------------------------------------
@pytest.fixture(scope="session")
def legacy_dict(torch, files):
    data = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
            "b": torch.ones(4, dtype=torch.float64), "step": 3}
    data["view"] = data["w"][1:, 1:3]
    path = files / "legacy_dict.pt"
    torch.save(data, path, _use_new_zipfile_serialization=False)
    return path, data


@pytest.fixture(scope="session")
def legacy_model(torch, files):
    model = TinyNet.make(torch)
    path = files / "legacy_model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model, path, _use_new_zipfile_serialization=False)
    return path, model


def all_dtype_tensors(torch) -> dict[str, object]:
    out = {
        "float64": torch.randn(3, dtype=torch.float64),
        "float32": torch.randn(2, 3),
        "float16": torch.randn(4).half(),
        "bfloat16": torch.randn(4).bfloat16(),
        "complex64": torch.randn(3, dtype=torch.complex64),
        "complex128": torch.randn(3, dtype=torch.complex128),
        "int64": torch.arange(-3, 3),
        "int32": torch.arange(-3, 3, dtype=torch.int32),
        "int16": torch.arange(-3, 3, dtype=torch.int16),
        "int8": torch.arange(-3, 3, dtype=torch.int8),
        "uint8": torch.arange(0, 6, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "uint16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
        "uint32": torch.tensor([0, 1, 2**32 - 1], dtype=torch.int64).to(torch.uint32),
        "uint64": torch.tensor([0, 1, 2**40], dtype=torch.int64).to(torch.uint64),
        "float8_e4m3fn": torch.randn(5).to(torch.float8_e4m3fn),
        "float8_e5m2": torch.randn(5).to(torch.float8_e5m2),
        "float8_e4m3fnuz": torch.randn(5).to(torch.float8_e4m3fnuz),
        "float8_e5m2fnuz": torch.randn(5).to(torch.float8_e5m2fnuz),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["complex32"] = torch.randn(3, dtype=torch.complex64).to(torch.complex32)
    return out


@pytest.fixture(scope="session")
def dtypes_file(torch, files):
    data = all_dtype_tensors(torch)
    path = files / "dtypes.pt"
    torch.save(data, path)
    return path, data


@pytest.fixture(scope="session")
def views_file(torch, files):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    data = {
        "base": base,
        "row": base[2],
        "cols": base[:, 3:7],
        "transposed": base.t(),
        "strided": base[::2, ::3],
        "param": torch.nn.Parameter(torch.randn(3, 3)),
    }
    data["tied"] = data["param"]
    path = files / "views.pt"
    torch.save(data, path)
    return path, data


@pytest.fixture(scope="session")
def dataparallel_file(torch, files):
    model = TinyNet.make(torch)
    sd = torch.nn.DataParallel(model).state_dict()
    path = files / "dp.pth"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="session")
def lightning_file(torch, files):
    model = TinyNet.make(torch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
    ckpt = {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": None}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.1, "layers": [8, 10], "name": "tiny"},
    }
    path = files / "lightning.ckpt"
    torch.save(ckpt, path)
    return path, ckpt


@pytest.fixture(scope="session")
def numpy_namespace_file(torch, files):
    import numpy as np

    data = {
        "best_acc": np.float64(0.9375),
        "best_epoch": np.int64(41),
        "flag": np.bool_(True),
        "half": np.float32(0.25),
        "args": argparse.Namespace(lr=0.01, arch="resnet18", milestones=[30, 60]),
        "class_weights": np.arange(6, dtype=np.float32).reshape(2, 3),
        "weights": torch.ones(2),
    }
    path = files / "numpy_ns.pt"
    torch.save(data, path)
    return path, data


@pytest.fixture(scope="session")
def quantized_file(torch, files):
    x = torch.randn(4, 5)
    with warnings.catch_warnings():  # quantized dtypes are deprecated, but files have them
        warnings.simplefilter("ignore")
        data = {
            "per_tensor": torch.quantize_per_tensor(x, 0.1, 3, torch.quint8),
            "per_tensor_qint8": torch.quantize_per_tensor(x, 0.05, 0, torch.qint8),
            "per_channel": torch.quantize_per_channel(
                x, torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 1, 2, 3]), 0,
                torch.qint8),
            "per_channel_axis1": torch.quantize_per_channel(
                x, torch.linspace(0.05, 0.3, 5), torch.arange(5), 1, torch.quint8),
            "conv_per_channel": torch.quantize_per_channel(
                torch.randn(3, 2, 3, 3), torch.tensor([0.01, 0.02, 0.03]),
                torch.tensor([0, 0, 0]), 0, torch.qint8),
        }
    path = files / "quantized.pt"
    torch.save(data, path)
    return path, data


@pytest.fixture(scope="session")
def cuda_file(torch, files, monkeypatch_session):
    """A file whose storages are recorded on cuda:0, as a GPU machine writes it."""
    import torch.serialization as ser

    model = TinyNet.make(torch)
    sd = model.state_dict()
    monkeypatch_session.setattr(ser, "location_tag", lambda storage: "cuda:0")
    path = files / "saved_on_gpu.pt"
    torch.save(sd, path)
    monkeypatch_session.undo()
    return path, sd


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def bare_pickle(torch, files):
    data = {"t": torch.arange(5, dtype=torch.float32), "name": "run-1", "lr": 0.1,
            "sizes": (3, 4)}
    path = files / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path, data


# -- hostile files ---------------------------------------------------------------------------
@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    path = tmp_path / MARKER_NAME
    yield path
    assert not path.exists(), "a payload ran: the marker file was created"


@pytest.fixture()
def payload_files(torch, tmp_path: Path, marker: Path) -> dict[str, Path]:
    """The same os.system payload in each container a user might be sent."""
    out = {}
    touch = f"touch {marker}"
    obj = {"weights": torch.ones(2), "evil": Payload(touch)}
    out["torch-zip"] = tmp_path / "evil_zip.pt"
    torch.save(obj, out["torch-zip"])
    out["torch-legacy"] = tmp_path / "evil_legacy.pt"
    torch.save(obj, out["torch-legacy"], _use_new_zipfile_serialization=False)
    out["pickle"] = tmp_path / "evil.pkl"
    for name, build in PAYLOAD_BUILDERS.items():
        out[name] = tmp_path / f"{name}.pkl"
        out[name].write_bytes(build(touch))
    assert not marker.exists()
    return out


PAYLOAD_BUILDERS = {
    "pickle": lambda cmd: pickle.dumps(Payload(cmd), protocol=2),
    "pickle-p0": lambda cmd: pickle.dumps(Payload(cmd), protocol=0),
    "pickle-p5": lambda cmd: pickle.dumps({"a": [Payload(cmd)]}, protocol=5),
    # names computed at load time: _codecs.decode feeds STACK_GLOBAL
    "computed-import": lambda cmd: computed_import_pickle(cmd),
    # a clean pickle, then a second one that runs the payload (pickle.load twice)
    "trailing": lambda cmd: pickle.dumps({"ok": 1}) + pickle.dumps(Payload(cmd)),
}


@pytest.fixture()
def payload_builders():
    """Builders of the bare-pickle payloads, for the test that proves they are live.
    ("trailing" runs its payload only on a second load, so it is left out.)"""
    return {k: v for k, v in PAYLOAD_BUILDERS.items() if k != "trailing"}


def computed_import_pickle(command: str) -> bytes:
    """``STACK_GLOBAL`` whose module and name are computed at load time.

    ``_codecs.decode("bf", "rot13")`` gives ``"os"``: the names "os" and
    "system" never appear in the stream, which is how scanners that read names
    are bypassed.
    """
    def rot13(s: str) -> bytes:
        hidden = s.translate(str.maketrans(
            "abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm"))
        return (b"\x8c\x07_codecs\x8c\x06decode\x93" + b"\x8c" + bytes([len(hidden)])
                + hidden.encode() + b"\x8c\x05rot13\x86R")
    cmd = command.encode()
    return (b"\x80\x04" + rot13("os") + rot13("system") + b"\x93"
            + b"X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R.")


@pytest.fixture(scope="session")
def pt2_file(torch, files):
    """``torch.export.save`` of a small network."""
    model = TinyNet.make(torch).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),))
    path = files / "tiny.pt2"
    torch.export.save(program, str(path))
    return path, program


@pytest.fixture
def loopback_only(monkeypatch):
    """Nothing may reach another address than 127.0.0.1 (the remote tests: no AWS, no
    Google endpoint or metadata server, no Hub): a connection elsewhere fails the test."""
    import socket

    real = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"a test tried to reach {address}")
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
