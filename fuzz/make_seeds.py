"""Small seed files of every format for the fuzzer (needs torch, onnx, safetensors).

    python fuzz/make_seeds.py OUT_DIR
"""

from __future__ import annotations

import io
import pickle
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    import corpus

    out.mkdir(parents=True, exist_ok=True)
    for sample in corpus.build(out / "corpus", out / "MARKER"):
        if sample.path.stat().st_size < 1 << 20:
            sample.path.rename(out / sample.name)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    sd = net.state_dict()
    torch.save(sd, out / "state_dict.pt")
    torch.save(sd, out / "state_dict_legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(net, out / "module.pt")
    torch.save({"x": torch.arange(6.0).reshape(2, 3)[:, 1:], "b": torch.ones(2).bfloat16(),
                "q": torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.quint8)
                if hasattr(torch, "quantize_per_tensor") else torch.ones(1)},
               out / "views_dtypes.pt", pickle_protocol=4)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"),
              metadata={"k": "v"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net.eval(), torch.randn(2, 4)).save(str(out / "traced.pt"))
        torch.onnx.export(net.eval(), torch.randn(2, 4), str(out / "model.onnx"), dynamo=False)
    (out / "plain.pkl").write_bytes(pickle.dumps({"a": [1, 2.5, "x", (3,)], "b": b"\0" * 8}, 2))
    buf = io.BytesIO()
    pickle.dump(torch.ones(2), buf)
    (out / "tensor_pickle.pkl").write_bytes(buf.getvalue())
    for leftover in (out / "corpus").iterdir():
        leftover.unlink()
    (out / "corpus").rmdir()


if __name__ == "__main__":
    make(Path(sys.argv[1]))
