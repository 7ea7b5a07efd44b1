"""`tunekit doctor`: what this machine can do, as tunekit/hardware.py sees it, and what is installed."""

from __future__ import annotations

import os
import platform

import torch

from tunekit import hardware


def doctor_report() -> dict:
    """Cores, ISA, AMX, measured matmul rates, GPUs, the precision `auto` picks, versions, the model cache."""
    from tunekit.models import list_models

    hardware.set_threads(None)
    shapes = hardware.model_shapes(None)
    # Measured anew (and cached for the runs that follow): a figure cached while another process
    # held the cores would understate both rates.
    fast, why, figures = hardware.cpu_bf16(shapes, torch.device("cpu"), use_cache=False)
    cpu = {"model": hardware.cpu_model(), "machine": platform.machine(), "cores": len(os.sched_getaffinity(0)),
           "torch_threads": torch.get_num_threads(), "isa": torch.backends.cpu.get_cpu_capability(),
           "amx": hardware.amx(), "avx512_bf16": "avx512_bf16" in hardware.cpu_flags(), "gflops": figures,
           "bf16_fast": fast, "decision": why}
    gpus = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        dev = torch.device("cuda", i)
        props = torch.cuda.get_device_properties(dev)
        gpus.append({"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                     "capability": ".".join(map(str, torch.cuda.get_device_capability(dev))),
                     "bf16_native": hardware.cuda_native_bf16(dev), "gflops": hardware.measure(shapes, dev, use_cache=False)})
    models = [{"name": m["name"], "size_bytes": m.get("size_bytes")} for m in list_models() if m.get("cached")]
    auto = hardware.choose_precision("auto")
    return {"cpu": cpu, "gpus": gpus, "libraries": _versions(),
            "auto": {"name": auto.name, "device": auto.device.type, "reason": auto.reason.removeprefix("auto: ")},
            "home": str(hardware.tunekit_home()), "models": models}


def doctor_lines(rep: dict) -> list[str]:
    c, lib = rep["cpu"], rep["libraries"]
    gpus = [f"gpu       {g['name']}, {g['memory_gb']} GiB, compute capability {g['capability']}, bf16 "
            f"{'native' if g['bf16_native'] else 'not native (fp16 with a gradient scaler)'}; matmul fp32 "
            f"{g['gflops']['fp32']:,.0f}, bf16 {g['gflops']['bf16']:,.0f} GFLOP/s" for g in rep["gpus"]]
    if not gpus:
        gpus = [f"gpu       none (torch {lib['torch']}, " + (f"CUDA {lib['cuda']})" if lib["cuda"] else "a CPU build)")]
    models = ", ".join(f"{m['name']} ({(m['size_bytes'] or 0) / 1e6:,.0f} MB)" for m in rep["models"]) or "none cached"
    return [
        f"cpu       {c['model']} ({c['machine']}), {c['cores']} cores, torch uses {c['torch_threads']} threads",
        f"isa       {c['isa']}; AMX {'yes' if c['amx'] else 'no'}; AVX512-BF16 {'yes' if c['avx512_bf16'] else 'no'}",
        f"matmul    fp32 {c['gflops']['fp32']:,.0f} GFLOP/s, bf16 {c['gflops']['bf16']:,.0f} GFLOP/s at a 1024-wide "
        f"model's shapes: bf16 {'is' if c['bf16_fast'] else 'is not'} fast on this CPU",
        *gpus,
        f"auto      train.precision=auto picks {rep['auto']['name']} on {rep['auto']['device']}: {rep['auto']['reason']}",
        "versions  " + ", ".join(f"{k} {v}" for k, v in lib.items() if v and k != "cuda"),
        f"home      {rep['home']} (model cache; hardware.json holds the measured matmul rates)",
        f"models    {models}",
    ]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "gguf", "trl"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out
