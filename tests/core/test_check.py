"""``check``: the report must be what torch's own ``load_state_dict(strict=True)`` says for
the same file and model, key for key and in its order; the fix must make it load.

Each case is a real torchvision model's state_dict changed the way people's checkpoints
differ (a DataParallel or torch.compile prefix, a Lightning ``model.`` part, a dropped or
an extra key, a resized head, renamed modules, half precision, a value that is no tensor),
saved with ``torch.save`` in tmp_path; the test loads it back with ``torch.load(...,
weights_only=True)`` (a file it made itself) into the model and parses torch's error.
"""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest

from ckpt_inspector.core.ops.check.emulate import CheckpointTarget, emulate
from ckpt_inspector.core.ops.check.fixes import best_prefix, head_size, infer_renames
from ckpt_inspector.core.ops.check.report import (
    DTYPE,
    FILLED,
    MISMATCHED,
    MISSING,
    OK,
    UNEXPECTED,
    CheckReport,
    Spec,
)
from ckpt_inspector.core.ops.check.request import CheckRequest, run_check
from ckpt_inspector.core.ops.check.state import CheckUsageError, Item

MODELS = ("resnet18", "mobilenet_v3_small")


# -- torch's own answer ------------------------------------------------------------------------
def torch_says(model, sd) -> dict[str, list[str]]:
    """torch's RuntimeError of ``model.load_state_dict(sd, strict=True)`` as lists."""
    out: dict[str, list[str]] = {"missing": [], "unexpected": [], "mismatched": [],
                                 "errors": []}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        head, _, body = str(err).partition(":\n\t")
        assert head.startswith("Error(s) in loading state_dict for "), str(err)
        for message in body.split("\n\t"):
            for name, start in (("missing", "Missing key(s) in state_dict: "),
                                ("unexpected", "Unexpected key(s) in state_dict: ")):
                if message.startswith(start):
                    out[name] = re.findall(r'"([^"]*)"', message[len(start):])
                    break
            else:
                m = re.match(r"size mismatch for (.+): copying a param with shape", message)
                if m:
                    out["mismatched"].append(m.group(1))
                else:
                    out["errors"].append(message)
    return out


def ours(report: CheckReport) -> dict[str, list[str]]:
    return {"missing": report.missing, "unexpected": report.unexpected,
            "mismatched": [m.key for m in report.mismatched], "errors": report.errors}


@pytest.fixture(scope="module")
def tv():
    import torchvision

    return torchvision


_BUILT: dict[tuple[str, int | None], object] = {}


def fresh(tv, name, num_classes=None):
    """The model with random weights (built once: loading into it changes values, not the
    keys and shapes a check is about)."""
    import warnings

    if (name, num_classes) not in _BUILT:
        kwargs = {"num_classes": num_classes} if num_classes else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _BUILT[name, num_classes] = tv.models.get_model(name, weights=None, **kwargs)
    return _BUILT[name, num_classes]


def renamed(sd, fn, keep_metadata=False):
    out = OrderedDict((fn(k), v) for k, v in sd.items())
    if keep_metadata:  # a module's prefix renamed as its keys are
        out._metadata = OrderedDict((fn(p + ".")[:-1] if p else p, v)
                                    for p, v in sd._metadata.items())
    return out


def variants(torch, tv, name):
    """(label, object to save, part of it that is the state_dict)."""
    model = fresh(tv, name)
    sd = model.state_dict()
    keys = list(sd)
    bn = next(k for k in keys if k.endswith("num_batches_tracked"))
    out = [("exact", sd, None)]
    out.append(("dataparallel", torch.nn.DataParallel(model).state_dict(), None))
    out.append(("compile", renamed(sd, lambda k: "_orig_mod." + k), None))
    out.append(("compile-metadata", renamed(sd, lambda k: "_orig_mod." + k, True), None))
    out.append(("lightning", {"state_dict": renamed(sd, lambda k: "model." + k),
                              "epoch": 3, "global_step": 10}, "state_dict"))
    dropped = model.state_dict()  # keeps _metadata: a missing num_batches_tracked counts
    del dropped[keys[0]], dropped[bn]
    out.append(("dropped", dropped, None))
    plain = {k: v for k, v in sd.items() if k != bn}  # no _metadata: torch fills it in
    out.append(("plain-dict-no-nbt", plain, None))
    extra = model.state_dict()
    extra["extra.weight"] = torch.ones(3)
    first_module = keys[0].rsplit(".", 1)[0]
    extra[f"{first_module}.surplus"] = torch.ones(1)  # a module's, not one of its tensors
    extra[f"{keys[0]}.deeper"] = torch.ones(1)  # a tensor's name used as a module
    extra[keys[0].split(".")[0]] = torch.ones(1)  # a child module's own name
    out.append(("extra", extra, None))
    out.append(("head", fresh(tv, name, num_classes=10).state_dict(), None))
    out.append(("half", OrderedDict((k, v.half() if v.is_floating_point() else v)
                                    for k, v in sd.items()), None))
    value = model.state_dict()
    value[keys[1]] = 3
    out.append(("not-a-tensor", value, None))
    seg = keys[0].split(".")[0]
    out.append(("renamed", renamed(sd, lambda k: re.sub(rf"^{seg}\.", "stem_x.", k)), None))
    return out


@pytest.fixture(scope="module", params=MODELS)
def cases(request, torch, tv, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    out = []
    for label, obj, part in variants(torch, tv, request.param):
        path = folder / f"{label}.pt"
        torch.save(obj, path)
        out.append((request.param, label, path, part))
    return out


def loaded(torch, path, part):
    obj = torch.load(path, weights_only=True)  # a file this test made
    return obj[part] if part else obj


def test_report_is_torchs_key_for_key(torch, tv, cases):
    for name, label, path, part in cases:
        report = run_check(CheckRequest(str(path), arch=name, key=part))
        expected = torch_says(fresh(tv, name), loaded(torch, path, part))
        assert ours(report) == expected, (name, label)
        assert report.compatible == (label in ("exact", "half", "plain-dict-no-nbt")), label
        assert report.exact


def test_another_checkpoint_as_the_model_matches_torch(torch, tv, cases, tmp_path):
    """--against: the model is a checkpoint of its state_dict, emulated without torch."""
    name = cases[0][0]
    other = tmp_path / "model.pt"
    torch.save(fresh(tv, name).state_dict(), other)
    for _name, label, path, part in cases:
        report = run_check(CheckRequest(str(path), against=str(other), key=part))
        expected = torch_says(fresh(tv, name), loaded(torch, path, part))
        assert ours(report) == expected, label
        assert not report.exact


def test_the_fix_makes_strict_loading_succeed(torch, tv, cases):
    for name, label, path, part in cases:
        report = run_check(CheckRequest(str(path), arch=name, key=part))
        if report.compatible:
            assert report.fix is None
            continue
        fix = report.fix
        if label in ("not-a-tensor", "dropped"):  # a value where a tensor goes, a weight
            assert not fix.compatible and fix.code == ""  # gone: nothing makes that load
            continue
        assert fix.compatible, (label, fix.summary)
        expect = {"dataparallel": ("module.", ""), "compile": ("_orig_mod.", ""),
                  "compile-metadata": ("_orig_mod.", ""), "lightning": ("model.", "")}
        if label in expect:
            assert (fix.strip_prefix, fix.add_prefix) == expect[label], label
        if label == "head":
            assert fix.num_classes == 10
        if label == "renamed" and name == "resnet18":  # one key: a rename
            assert fix.renames == [("stem_x", "conv1")]
        if label == "renamed" and name != "resnet18":  # every features.* key: a prefix
            assert (fix.strip_prefix, fix.add_prefix) == ("stem_x.", "features.")
        if label == "extra":
            assert not fix.strict and set(fix.remaining["unexpected"]) == set(
                report.unexpected)
        namespace = {"sd": loaded(torch, path, part)}
        exec(fix.code, namespace)  # the fix's own code: loads without an error
        assert isinstance(namespace["model"], torch.nn.Module)


def test_dropped_weight_has_no_fix_but_says_what_is_left(torch, tv, cases):
    for name, label, path, _part in cases:
        if label != "dropped":
            continue
        report = run_check(CheckRequest(str(path), arch=name))
        keys = list(fresh(tv, name).state_dict())
        bn = next(k for k in keys if k.endswith("num_batches_tracked"))
        # the file kept its _metadata (version 2 BatchNorms): a missing counter is an error
        assert report.missing == [keys[0], bn]
        assert not report.fix.compatible and report.fix.remaining["missing"] == [keys[0], bn]


def test_rows_give_every_key_its_status(torch, tv, tmp_path):
    model = fresh(tv, "resnet18")
    sd = model.state_dict()
    sd["conv1.weight"] = sd["conv1.weight"].half()
    del sd["layer1.0.conv1.weight"]
    sd["fc.weight"] = torch.zeros(10, 512)
    sd["junk"] = torch.zeros(1)
    plain = dict(sd)  # no _metadata: a missing num_batches_tracked is filled in
    del plain["bn1.num_batches_tracked"]
    torch.save(plain, tmp_path / "mixed.pt")
    report = run_check(CheckRequest(str(tmp_path / "mixed.pt"), arch="resnet18"))
    status = {r.key: r.status for r in report.rows}
    assert status["conv1.weight"] == DTYPE
    assert status["layer1.0.conv1.weight"] == MISSING
    assert status["fc.weight"] == MISMATCHED
    assert status["junk"] == UNEXPECTED
    assert status["bn1.num_batches_tracked"] == FILLED
    assert status["fc.bias"] == OK
    assert [d.key for d in report.dtypes] == ["conv1.weight"]
    assert any("filled in" in n for n in report.notes)
    back = CheckReport.from_json(report.to_json())
    assert back.to_json() == report.to_json()


def test_builder_on_the_meta_device(torch, tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch\n"
        "CALLS = []\n"
        "def build():\n"
        "    CALLS.append(torch.empty(1).device.type)\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),\n"
        "                               torch.nn.Linear(8, 2))\n")
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                              torch.nn.Linear(8, 3))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    report = run_check(CheckRequest(str(tmp_path / "net.pt"), builder="mynet:build"))
    import mynet

    assert mynet.CALLS == ["meta"]  # built under torch.device("meta"): nothing allocated
    assert [m.key for m in report.mismatched] == ["2.weight", "2.bias"]
    assert report.fix.num_classes is None and not report.fix.compatible
    assert any("3 outputs" in n for n in report.fix.notes)
    by_file = run_check(CheckRequest(str(tmp_path / "net.pt"),
                                     builder=f"{tmp_path / 'mynet.py'}:build"))
    assert ours(by_file) == ours(report)


@pytest.mark.parametrize("request_kwargs, words", [
    ({"arch": "resnet17"}, "no model called 'resnet17'"),
    ({"builder": "no_such_module_here:build"}, "cannot import"),
    ({"builder": "os:getcwd"}, "returned a str"),
    ({"builder": "json"}, "pkg.module:function"),
    ({"arch": "resnet18", "key": "nope"}, "no part called 'nope'"),
])
def test_bad_input_is_a_usage_error(torch, tmp_path, request_kwargs, words):
    torch.save({"a.weight": torch.ones(2)}, tmp_path / "f.pt")
    with pytest.raises(CheckUsageError, match=re.escape(words)):
        run_check(CheckRequest(str(tmp_path / "f.pt"), **request_kwargs))


# -- without torch: the emulation and the fix's pieces --------------------------------------------
def spec(*shape: int) -> Spec:
    return Spec(tuple(shape), "float32")


def test_emulation_follows_torchs_rules():
    expected = {"a.weight": spec(2), "a.bn.running_mean": spec(2),
                "a.bn.running_var": spec(2), "a.bn.num_batches_tracked": spec(),
                "b.weight": spec(3), "scale": spec()}
    items = [Item("a.weight", spec(2)), Item("a.bn.running_mean", spec(2)),
             Item("a.bn.running_var", spec(2)), Item("b.weight", spec(4)),
             Item("scale", spec(1)),  # a 1-element vector loads into a 0-d tensor
             Item("a", spec(1)), Item("a.weight.x", spec(1)), Item("c.weight", spec(1))]
    out = emulate(expected, items, None)
    assert out.missing == []  # num_batches_tracked filled: no _metadata version
    assert out.mismatched == ["b.weight"]
    assert out.unexpected == ["a", "c.weight", "a.weight.x"]
    assert emulate(expected, items, {"a.bn": 2}).missing == ["a.bn.num_batches_tracked"]
    target = CheckpointTarget("other.pt", expected)
    assert target.load(items, None).mismatched == ["b.weight"]


def test_prefix_rename_and_head_are_found():
    expected = {f"backbone.l{i}.conv.weight": spec(i + 1, 3) for i in range(4)}
    expected["head.fc.weight"] = spec(1000, 8)
    specs = {f"l{i}.conv.weight": spec(i + 1, 3) for i in range(4)}
    specs["head.fc.weight"] = spec(10, 8)
    assert best_prefix(specs, expected) == ("", "backbone.")
    moved = {f"backbone.l{i}.block.weight": spec(i + 1, 3) for i in range(4)}
    want = {f"backbone.l{i}.conv.weight": spec(i + 1, 3) for i in range(4)}
    assert infer_renames(moved, want) == [("block", "conv")]
    # one key, its shape shared: no rename can be told apart
    assert infer_renames({"x.w": spec(2), "y.w": spec(2)}, {"p.w": spec(2), "q.w": spec(2)}) \
        == []
    assert head_size(specs | {"backbone.l0.conv.weight": spec(1, 3)}, expected) == 10


def test_builder_that_needs_real_numbers_and_a_loader_that_fails(torch, tmp_path):
    """A builder doing arithmetic meta tensors cannot (``.item()``) is built again with each
    tensor moved to meta as it is made; a model whose own loader fails on meta tensors is
    bad input (exit 2), not a traceback."""
    (tmp_path / "odd.py").write_text(
        "import torch\n"
        "def needs_item():\n"
        "    width = int(torch.tensor([4.0]).sum().item())\n"
        "    return torch.nn.Linear(width, 2)\n"
        "class Picky(torch.nn.Linear):\n"
        "    def _load_from_state_dict(self, sd, prefix, *args):\n"
        "        raise ValueError('no meta here')\n"
        "def picky():\n"
        "    return Picky(4, 2)\n")
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "lin.pt")
    report = run_check(CheckRequest(str(tmp_path / "lin.pt"),
                                    builder=f"{tmp_path / 'odd.py'}:needs_item"))
    assert report.compatible and report.target["class"] == "Linear"
    with pytest.raises(CheckUsageError, match="load_state_dict failed on meta tensors: "
                                              "ValueError: no meta here"):
        run_check(CheckRequest(str(tmp_path / "lin.pt"), builder=f"{tmp_path / 'odd.py'}:picky"))


def test_non_persistent_buffers_and_extra_values_as_torch_has_them(torch, tmp_path,
                                                                    monkeypatch):
    """A non-persistent buffer is not in a state_dict: a checkpoint that has one under its
    name is reported unexpected, by the builder's model and by another file alike."""
    (tmp_path / "bufnet.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, 2)\n"
        "        self.register_buffer('mean', torch.zeros(3), persistent=False)\n"
        "        self.register_buffer('count', torch.zeros((), dtype=torch.long))\n"
        "def build():\n"
        "    return Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import bufnet

    model = bufnet.build()
    sd = model.state_dict()
    assert "mean" not in sd
    torch.save(sd, tmp_path / "model.pt")
    sd = OrderedDict(sd)
    sd["mean"] = torch.zeros(3)
    sd["count"] = torch.zeros(1, dtype=torch.long)  # one element into a 0-d buffer: fine
    torch.save(sd, tmp_path / "with_mean.pt")
    expected = torch_says(model, torch.load(tmp_path / "with_mean.pt", weights_only=True))
    assert expected["unexpected"] == ["mean"] and not expected["mismatched"]
    for request in (CheckRequest(str(tmp_path / "with_mean.pt"), builder="bufnet:build"),
                    CheckRequest(str(tmp_path / "with_mean.pt"),
                                 against=str(tmp_path / "model.pt"))):
        report = run_check(request)
        assert ours(report) == expected, request
        assert not report.fix.strict and report.fix.compatible  # strict=False ignores it
