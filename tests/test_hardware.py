"""The one place that knows the machine: every branch of the precision decision forced by
monkeypatching (AMX with bf16 slow, no AMX with bf16 fast, no AMX and slow, CUDA with and
without native bf16), the measured probe and its cache, TF32, and `tunekit doctor`."""

from __future__ import annotations

import json

import pytest
import torch

from tunekit import hardware
from tunekit.errors import ConfigError
from tunekit.hardware import measure as REAL_MEASURE  # the conftest fixture replaces hardware.measure per test

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def _machine(monkeypatch, *, amx: bool, fp32: float, bf16: float) -> None:
    monkeypatch.setattr(hardware, "amx", lambda: amx)
    monkeypatch.setattr(hardware, "measure", lambda shapes, device, use_cache=True: {"fp32": fp32, "bf16": bf16, "cached": False})


@pytest.mark.parametrize("amx, fp32, bf16, want, says", [
    (True, 300.0, 1800.0, torch.bfloat16, "has AMX"),        # Sapphire Rapids: AMX and fast
    (True, 300.0, 320.0, None, "has AMX"),                   # AMX present, but bf16 measures slow (e.g. tiny shapes)
    (False, 90.0, 220.0, torch.bfloat16, "has no AMX"),      # Zen 4: AVX512-BF16 without AMX, fast
    (False, 120.0, 18.0, None, "has no AMX"),                # AVX2: bf16 emulated, many times slower
])
def test_auto_follows_the_measured_probe_not_the_isa_name(monkeypatch, amx, fp32, bf16, want, says):
    _machine(monkeypatch, amx=amx, fp32=fp32, bf16=bf16)
    p = hardware.choose_precision("auto", CPU)
    assert p.dtype is want and p.device == CPU
    # the run log's line: which was picked, and the two measured figures
    assert says in p.reason and f"{bf16:,.0f}" in p.reason and f"{fp32:,.0f}" in p.reason
    assert p.gflops == {"fp32": fp32, "bf16": bf16, "cached": False}
    assert hardware.choose_precision("fp32", CPU).dtype is None
    forced = hardware.choose_precision("bf16", CPU)
    assert forced.dtype is torch.bfloat16 and (("slow here" in forced.reason) == (want is None))


def test_bad_settings_name_the_key(monkeypatch):
    _machine(monkeypatch, amx=False, fp32=100.0, bf16=10.0)
    with pytest.raises(ConfigError, match="train.precision=fp16 is for GPUs"):
        hardware.choose_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="--precision='fp8'"):
        hardware.choose_precision("fp8", CPU, key="--precision")


@pytest.fixture
def gpu(monkeypatch):
    """A fake CUDA device of a given compute capability; TF32 switches restored afterwards."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def make(capability: tuple[int, int], name: str):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)

    yield make
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_cuda_with_native_bf16_takes_bf16_and_tf32(gpu):
    gpu((8, 0), "NVIDIA A100")
    p = hardware.choose_precision("auto", CUDA)
    assert p.dtype is torch.bfloat16 and not p.needs_scaler and "A100" in p.reason
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # fp32 matmuls on tensor cores
    fp32 = hardware.choose_precision("fp32", CUDA)
    assert fp32.dtype is None and "TF32" in fp32.reason
    with hardware.exact_fp32():  # export's checks: plain fp32 inside, TF32 back after
        assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32


def test_cuda_without_bf16_gets_fp16_with_a_scaler_not_fp32(gpu):
    gpu((7, 0), "Tesla V100")
    p = hardware.choose_precision("auto", CUDA)
    assert p.dtype is torch.float16 and p.needs_scaler and "V100" in p.reason and "gradient scaler" in p.reason
    assert hardware.choose_precision("fp16", CUDA).dtype is torch.float16
    with pytest.raises(ConfigError, match="no native bf16; use train.precision=fp16"):
        hardware.choose_precision("bf16", CUDA)
    assert not torch.backends.cuda.matmul.allow_tf32  # a V100 has no TF32
    assert hardware.choose_precision("fp32", CUDA).reason == "train.precision=fp32"


def test_measure_times_both_dtypes_once_then_answers_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "measure", REAL_MEASURE)
    calls = []
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, shapes, device, seconds=0: calls.append(dtype) or
                        (50.0 if dtype is torch.float32 else 150.0))
    shapes = [(4, 8, 16)]
    first = hardware.measure(shapes, CPU)
    assert first == {"fp32": 50.0, "bf16": 150.0, "cached": False} and calls == [torch.float32, torch.bfloat16]
    again = hardware.measure(shapes, CPU)
    assert again["cached"] is True and (again["fp32"], again["bf16"]) == (50.0, 150.0)
    assert len(calls) == 2  # not measured again
    saved = json.loads((tmp_path / hardware.CACHE_FILE).read_text())
    (key,) = saved
    assert f"torch {torch.__version__}" in key and f"threads {torch.get_num_threads()}" in key and "4x8x16" in key
    hardware.measure([(4, 8, 32)], CPU)  # other shapes: measured anew
    assert len(calls) == 4


def test_matmul_gflops_measures_for_real():
    rate = hardware.matmul_gflops(torch.float32, [(16, 32, 32)], CPU, seconds=0.01)
    assert rate > 0


def test_probe_shapes_come_from_the_models_config(tiny_model_dir, tmp_path):
    assert hardware.model_shapes(tiny_model_dir) == [(256, 32, 32), (256, 32, 64), (256, 64, 32)]
    assert hardware.model_shapes(tmp_path) == hardware.model_shapes(None)  # no config.json: a generic width


def test_for_inference_casts_in_place_to_the_compute_dtype(tiny_model_dir):
    from tunekit.models.loading import load_model

    model = hardware.for_inference(load_model(tiny_model_dir), hardware.Precision(torch.bfloat16, CPU, "test"))
    assert not model.training and all(p.dtype is torch.bfloat16 for p in model.parameters())
    assert model.model.rotary_emb.inv_freq.dtype is torch.float32  # buffers keep fp32, as from_pretrained(dtype=bf16) keeps them
    model = hardware.for_inference(load_model(tiny_model_dir), hardware.FP32)
    assert all(p.dtype is torch.float32 for p in model.parameters())
    model = hardware.for_inference(load_model(tiny_model_dir, "bfloat16"), hardware.FP32)
    assert all(p.dtype is torch.bfloat16 for p in model.parameters())  # fp32 compute does not upcast bf16 weights


def test_doctor_shows_amx_and_the_measured_rates(monkeypatch, capsys, tmp_path):
    from tunekit.cli import main

    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path))
    monkeypatch.setattr(hardware, "set_threads", lambda threads=None: None)  # the suite keeps one thread
    _machine(monkeypatch, amx=True, fp32=277.0, bf16=1835.0)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "AMX yes" in out and "fp32 277 GFLOP/s, bf16 1,835 GFLOP/s" in out and "bf16 is fast" in out
    assert "auto picks bf16 on cpu: this CPU has AMX" in out and "torch " in out and "models    none cached" in out
    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["cpu"]["amx"] is True and rep["cpu"]["bf16_fast"] is True and rep["libraries"]["torch"] == torch.__version__
