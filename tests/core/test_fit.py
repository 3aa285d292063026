"""Whether the weights fit on the devices here (core/fit.py), with devices as
``devices --json`` lists them."""

from __future__ import annotations

from ckpt_inspector.core.devices import system_memory
from ckpt_inspector.core.fit import check_fit

GIB = 1 << 30


def memory(weights: int, half: int | None = None) -> dict:
    half = weights // 2 if half is None else half
    return {"saved": weights, "float16": half, "bfloat16": half,
            "weights": {"tensors": 1, "saved": weights, "float16": half, "bfloat16": half}}


def device(ident: str, free: int | None) -> dict:
    return {"id": ident, "label": ident, "free_bytes": free, "total_bytes": free}


def test_unknown_memory_says_nothing():
    assert check_fit(memory(GIB), [device("cpu", None)]) is None
    assert check_fit(memory(GIB), []) is None


def test_fits_on_a_gpu():
    fit = check_fit(memory(10 * GIB), [device("cpu", 64 * GIB), device("cuda:0", 4 * GIB),
                                       device("cuda:1", 70 * GIB)])
    assert fit.sentence == "fits on cuda:1 (70.0 GiB free)"
    assert fit.fits == ["cpu", "cuda:1"] and fit.need == 10 * GIB
    assert fit.assumes.startswith("Weights only (10.0 GiB as saved): no activations")


def test_exactly_the_free_memory_fits():
    fit = check_fit(memory(8 * GIB), [device("cuda:0", 8 * GIB)])
    assert fit.sentence.startswith("fits on cuda:0")


def test_fits_only_in_half_precision():
    fit = check_fit(memory(30 * GIB), [device("cuda:0", 20 * GIB)])
    assert fit.sentence == ("does not fit on any single GPU here as saved; cast to float16 "
                            "or bfloat16 (15.0 GiB) it fits on cuda:0 (20.0 GiB free)")
    assert fit.fits == [] and fit.fits_half == ["cuda:0"]


def test_does_not_fit_anywhere():
    fit = check_fit(memory(100 * GIB), [device("cpu", 32 * GIB), device("cuda:0", 20 * GIB),
                                        device("cuda:1", 24 * GIB)])
    assert fit.sentence == ("does not fit on any single device here (largest free: 24.0 GiB "
                            "on cuda:1, system memory: 32.0 GiB available)")
    assert fit.fits == fit.fits_half == []


def test_two_gpus_each_too_small_although_together_enough():
    fit = check_fit(memory(30 * GIB, 30 * GIB), [device("cuda:0", 20 * GIB),
                                                 device("cuda:1", 20 * GIB)])
    assert fit.sentence.startswith("does not fit on any single device here")


def test_no_gpu_fits_in_system_memory():
    fit = check_fit(memory(GIB), [device("cpu", 16 * GIB)])
    assert fit.sentence == "no GPU here; fits in system memory (16.0 GiB available)"


def test_gpu_too_small_but_system_memory_enough():
    fit = check_fit(memory(40 * GIB, 40 * GIB),
                    [device("cpu", 100 * GIB), device("cuda:0", 16 * GIB)])
    assert fit.sentence == ("does not fit on any single GPU here (largest free: 16.0 GiB on "
                            "cuda:0); fits in system memory (100.0 GiB available)")


def test_a_gpu_whose_free_memory_is_unknown_is_left_out():
    fit = check_fit(memory(GIB), [device("cpu", 8 * GIB), device("mps", None)])
    assert fit.sentence.startswith("no GPU here")


def test_many_devices_are_named_a_few_at_a_time():
    fit = check_fit(memory(GIB), [device(f"cuda:{i}", 80 * GIB) for i in range(8)])
    assert fit.sentence.endswith("cuda:2 (80.0 GiB free) and 5 more")


def test_system_memory_is_read():
    free, total = system_memory()
    assert isinstance(free, int) and isinstance(total, int) and 0 < free <= total
