"""``ckpt-inspector load``: a file you trust, loaded with torch onto a device."""

from __future__ import annotations

import json

from support import run_cli


def test_load_with_torch_onto_a_device(cuda_file, numpy_namespace_file):
    """A file saved on cuda:0 loads onto the cpu: the device picker's map_location."""
    proc = run_cli("load", str(cuda_file[0]), "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["devices"] == ["cpu"] and result["tensors"] == len(cuda_file[1])
    refused = run_cli("load", str(numpy_namespace_file[0]))
    assert refused.returncode == 1
    assert "run code" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_a_device_this_machine_lacks_is_a_usage_error(tensors_file, torch):
    """The file is fine: a device that is not here is the command line's mistake (exit 2,
    as for exports), named in one line; not 'unreadable' (3)."""
    missing = [d for d, here in (("cuda:0", torch.cuda.is_available()),
                                 (f"cuda:{torch.cuda.device_count()}", False)) if not here]
    for device in [*missing, "banana"]:
        proc = run_cli("load", str(tensors_file[0]), "--device", device)
        assert proc.returncode == 2, (device, proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"ckpt-inspector: device {device} is not available here: "), line
        assert proc.stdout == ""
