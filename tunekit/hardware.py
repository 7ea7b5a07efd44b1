"""What this machine can do, decided in one place: the device every stage runs on, whether
bf16 multiplies fast here, and the one precision that training, held-out loss, evaluation,
chat, generate and the plan share (so chat and generate answer as the eval did: exactly in
fp32; in bf16 up to near-ties that a batch of other prompts breaks differently).

Why bf16 is measured, not guessed. `torch.backends.cpu.get_cpu_capability()` names only the
vector ISA (it stops at "AVX512") and never says AMX; `torch.cpu._is_amx_tile_supported()`
does. But neither flag says what a run gets: AVX512-BF16 CPUs without AMX (AMD Zen 4) run
bf16 matmuls 2-4x faster than fp32 through oneDNN, an AVX2 CPU runs them many times slower,
and tiny matrices are dominated by call overhead either way. So `auto` times a few matmuls
at the model's own shapes, in both dtypes, for well under a second, and caches the figures
per machine, torch version, thread count and shapes in $TUNEKIT_HOME/hardware.json.

On CUDA the capability decides: bf16 where the GPU has it natively (compute capability 8+),
else fp16 autocast with a gradient scaler (T4, V100); TF32 matmuls are enabled wherever the
GPU has them. fp32 weights stay the master copy in training either way; see `Precision`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tunekit import atomic
from tunekit.errors import ConfigError

# oneDNN (which runs bf16 matmuls on CPUs) caches a primitive per matrix shape, 1,024 by default,
# and a fine-tuning run's padded batches come in many widths. Measured on the demo's training
# (bf16, AMD EPYC, one epoch): the default cache grew the resident set steadily to a 3.6 GB peak
# (fp32: 2.9-3.0 GB) in 140-159 s; 128 primitives: 2.7-2.9 GB in 122-132 s; 8: 2.6 GB in 143 s. Set here,
# before torch's first bf16 matmul reads it; an explicit setting in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")

# bf16 autocast adds casts of activations (and of any fp32 weight) around every matmul, so
# bf16 must beat fp32 at the model's shapes by a margin before `auto` takes it.
FAST_MARGIN = 1.25
# Rows of the probe's matmuls: a micro-batch of a few hundred tokens, as training and eval run.
PROBE_ROWS = 256
PROBE_SECONDS = 0.12  # per dtype
CACHE_FILE = "hardware.json"
SETTINGS = ("auto", "fp32", "bf16", "fp16")


def tunekit_home() -> Path:
    """$TUNEKIT_HOME, or ~/.cache/tunekit."""
    env = os.environ.get("TUNEKIT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tunekit"


@dataclass(frozen=True)
class Precision:
    """How a stage computes: on `device`, matmuls in `dtype` under autocast (None: plain fp32).

    Training keeps fp32 master weights, optimiser state and loss; with `dtype` set the forward
    runs under autocast, and LoRA kinds keep their frozen base in that dtype (train/compute.py). Generation casts the whole model to `dtype` (see `for_inference`).
    `gflops` holds the measured fp32/bf16 matmul rates the decision followed, when measured.
    """

    dtype: torch.dtype | None
    device: torch.device
    reason: str
    gflops: dict = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    @property
    def needs_scaler(self) -> bool:
        """fp16's narrow range underflows small gradients unless the loss is scaled."""
        return self.dtype is torch.float16

    def autocast(self):
        """A context for forward and loss; backward runs outside it, as torch recommends."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        return f"{self.name} on {self.device.type}: {self.reason}"


FP32 = Precision(None, torch.device("cpu"), "fp32")


def set_threads(threads: int | None) -> None:
    """Use every core unless told otherwise (torch's default can undercount in containers); the
    processes torchrun starts on one machine share its cores (each OpenMP pool spinning on every
    core would make them fight for the cores: small matmuls ran ~20x slower that way)."""
    torch.set_num_threads(threads or max(1, len(os.sched_getaffinity(0)) // local_world_size()))


def pick_device() -> torch.device:
    """The GPU when there is one (under torchrun: this process's own, LOCAL_RANK), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank()) if world_size() > 1 else torch.device("cuda")


# --- Several processes: torchrun's environment and the process group ---
#
# torchrun (and Ray, SLURM scripts and others that follow its convention) starts one process per
# device and tells each its place in the environment: RANK, WORLD_SIZE, LOCAL_RANK,
# LOCAL_WORLD_SIZE, MASTER_ADDR/PORT. Every process runs the same command; rank 0 alone writes
# the run folder, and the others learn its decisions (`agree`).

DEFAULT_TIMEOUT_S = 1800
"""How long a collective waits for the slowest process before failing. The other processes wait
in one while rank 0 alone prepares the data or writes a checkpoint; torch's own default (10
minutes for gloo) cut a data preparation of a few hundred thousand records short. The
environment variable TUNEKIT_DIST_TIMEOUT_S sets another."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(f"environment variable {name}={os.environ[name]!r} is not a whole number") from None


def world_size() -> int:
    """How many processes the job has (1 without torchrun)."""
    return _env_int("WORLD_SIZE", 1)


def rank() -> int:
    return _env_int("RANK", 0)


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def local_world_size() -> int:
    """How many of the job's processes run on this machine."""
    return _env_int("LOCAL_WORLD_SIZE", 1)


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def is_main() -> bool:
    """Rank 0: the one process that writes the run folder, logs and prints."""
    return rank() == 0


def join_process_group() -> bool:
    """Join the job's process group when torchrun started several processes; False when alone.

    env:// reads the rendezvous torchrun made (MASTER_ADDR/PORT). gloo moves the CPU tensors
    (and the small messages of `agree`); on GPUs nccl moves the GPU tensors. The timeout is
    explicit (DEFAULT_TIMEOUT_S). Idempotent: a second call, or a launcher that joined already
    (Ray Train), keeps the group there is."""
    import torch.distributed as dist
    from datetime import timedelta

    if world_size() == 1:
        return False
    if dist.is_initialized():
        return True
    device = pick_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
    timeout = timedelta(seconds=_env_int("TUNEKIT_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    store = _attempt_store(timeout)
    if store is None:
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    else:
        dist.init_process_group(backend, store=store, rank=rank(), world_size=world_size(), timeout=timeout)
    return True


def _attempt_store(timeout):
    """The store this attempt's processes meet in, when torchrun's own store needs a prefix; else None.

    torchrun (torch 2.13) hands its processes the agent's TCPStore and keeps that same store
    across `--max-restarts`, while torch.distributed names its keys as if every attempt had a
    fresh one. After a restart a process can read the address a dead process of the attempt
    before published, and the group fails ("connectFullMesh failed ... Connection refused"):
    on this 2-core machine 1 restart in 4, and in CI one hung past 5 minutes (pytorch#167288 is
    the same on nccl). With one torchrun agent every process of an attempt has the same
    TORCHELASTIC_RESTART_COUNT, so the attempt becomes a key prefix. Agents on several machines
    count restarts separately, so there the fix is torchrun's own opt-out, which gives every
    attempt a new store: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 on every machine (said once)."""
    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or _env_int("TORCHELASTIC_MAX_RESTARTS", 0) == 0:
        return None  # a new store per attempt, or no second attempt
    if _env_int("GROUP_WORLD_SIZE", 1) > 1:
        if is_main() and _env_int("TORCHELASTIC_RESTART_COUNT", 0) == 0:
            print("tunekit: warning: torchrun --max-restarts over several machines shares one store across "
                  "attempts, and a restarted job can fail to reconnect; set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
                  "on every machine before torchrun", file=sys.stderr)
        return None
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 0), world_size(),
                          is_master=False, timeout=timeout)
    return dist.PrefixStore(f"tunekit/attempt-{attempt}", agent)


def leave_process_group() -> None:
    """Destroy the process group, once what used it is gone.

    A device mesh (DDP's and FSDP2's) still alive when the group is destroyed, or at exit, made a
    process abort as it ended ("terminate called without an active exception", SIGABRT) in 3 to 6
    of 8 runs of 2 processes on gloo (torch 2.13), and torchrun then reports the job failed after
    all its work was done. Collecting the garbage first frees the meshes of finished stages: 0 of 10."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def joined() -> bool:
    """Whether this process is one of several in a process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(work, *args, **kwargs):
    """Rank 0 runs `work(*args, **kwargs)`; every process returns its result, or raises its error.

    For what one process decides or writes for all (the run folder's lock, a stage only rank 0
    runs, which checkpoint to resume): the others wait here, then go on as rank 0 did. A
    failure on rank 0 reaches them as the same exception, not as a collective timing out half an
    hour later. Alone (no process group) it is a plain call."""
    if not joined():
        return work(*args, **kwargs)
    import torch.distributed as dist

    mine = None
    if dist.get_rank() == 0:
        try:
            mine = ("ok", work(*args, **kwargs))
        except Exception as e:  # noqa: BLE001  passed on to the others, then raised here too
            mine = ("error", e)
    told = mine
    if mine is not None and mine[0] == "error" and not _pickles(mine[1]):
        told = ("error", RuntimeError(f"{type(mine[1]).__name__}: {mine[1]}"))  # its words, at least
    box = [told]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    outcome, value = mine if mine is not None else box[0]
    if outcome == "error":
        if mine is None:
            value.told_by_rank0 = True  # the CLI prints it on rank 0 only
        raise value
    return value


def _pickles(obj) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(obj))
        return True
    except Exception:  # noqa: BLE001
        return False


def amx() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), which multiply bf16 fast."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpuinfo(field_name: str) -> str | None:
    """The first `field_name` line of /proc/cpuinfo (Linux), or None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field_name):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's marketing name, e.g. "Intel(R) Xeon(R) Platinum 8481C" ("" when unknown)."""
    return _cpuinfo("model name") or platform.processor()


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cuda_native_bf16(device: torch.device) -> bool:
    """bf16 in the GPU's tensor cores (compute capability 8.0+), not emulated through fp32."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def enable_tf32(device: torch.device) -> bool:
    """Let fp32 matmuls and convolutions use TF32 tensor cores where the GPU has them (Ampere+):
    ~8x the fp32 rate, 10-bit mantissa products with fp32 accumulation. Returns whether it applies."""
    if device.type != "cuda" or not cuda_native_bf16(device):
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return True


@contextlib.contextmanager
def exact_fp32():
    """Plain fp32 matmuls inside (no TF32): for checks whose tolerance is fp32's, such as export's."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


# Attention on a CPU, by width and precision. SDPA's CPU flash kernel pays a fixed cost per call,
# most in its bf16 backward, where written-out attention (transformers' "eager": two matmuls and
# a softmax) grows with the square of the width. Forward and backward of SmolLM2-135M with the
# demo's LoRA at batch 8 on a 2-core EPYC (bench/attention.py): in bf16 eager took 0.87-0.92 of
# sdpa's time at every width up to 192 in every run, and above that one run found it faster and
# another slower (512 tokens: 7.5 against 8.6 s, and 11.8 against 8.8 s); in fp32 the two were
# within a few percent either way. So: eager for bf16 rows below 224 tokens, never in fp32.
# The demo's train stage, switch off and on alternated in fresh processes (3 pairs, 0.3 epoch
# each, bench/results/attention_train.md): 391-446 against 488-516 tokens/s, same held-out loss.
EAGER_ATTENTION_BELOW = {"bf16": 224, "fp32": 0}


@contextlib.contextmanager
def attention_for(model, width: int, precision: Precision):
    """Inside, `model` computes attention the faster way for rows of `width` tokens in `precision`.

    Only a model loaded with "sdpa" (transformers' default) is switched, only on a CPU, only
    below EAGER_ATTENTION_BELOW, and never one that soft-caps its attention scores (which only
    the eager code applies): there both ways compute the same function, so the switch changes
    time, not results beyond rounding. Keep the backward inside too: activation checkpointing
    recomputes the forward there, and must recompute it the same way.
    """
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    below = EAGER_ATTENTION_BELOW.get(precision.name, EAGER_ATTENTION_BELOW["fp32"])
    if (precision.device.type != "cpu" or impl != "sdpa" or width >= below
            or getattr(config, "attn_logit_softcapping", None)):
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = impl


def model_shapes(model_dir: str | Path | None) -> list[tuple[int, int, int]]:
    """(rows, in, out) of the matmuls that dominate a step of this model: attention and MLP
    projections at PROBE_ROWS tokens. Read from config.json; a generic 1024-wide model without one."""
    hidden, inter = 1024, 2816
    with contextlib.suppress(OSError, ValueError, TypeError):
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)  # multimodal wrappers keep the language model's sizes inside
        hidden = int(cfg["hidden_size"])
        inter = int(cfg.get("intermediate_size") or 4 * hidden)
    return [(PROBE_ROWS, hidden, hidden), (PROBE_ROWS, hidden, inter), (PROBE_ROWS, inter, hidden)]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timing on a GPU); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(dtype: torch.dtype, shapes: list[tuple[int, int, int]], device: torch.device,
                  seconds: float = PROBE_SECONDS) -> float:
    """GFLOP/s of `F.linear` over `shapes` in `dtype` (after one untimed round: kernel selection,
    oneDNN's weight packing), repeated for about `seconds`."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    pairs = [(torch.randn(m, k, generator=gen).to(device, dtype), torch.randn(n, k, generator=gen).to(device, dtype))
             for m, k, n in shapes]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for x, w in pairs:
        F.linear(x, w)
    sync(device)
    rounds, start = 0, time.perf_counter()
    while True:
        for x, w in pairs:
            F.linear(x, w)
        sync(device)
        rounds += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or rounds >= 1000:
            return rounds * flops / elapsed / 1e9


def _machine_key(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return f"{where}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def measure(shapes: list[tuple[int, int, int]], device: torch.device, use_cache: bool = True) -> dict:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s, "cached": bool} at `shapes`, cached per machine and shapes."""
    key = f"{_machine_key(device)}|{' '.join('x'.join(map(str, s)) for s in shapes)}"
    path = tunekit_home() / CACHE_FILE
    cache: dict = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(path.read_text())
    if use_cache and isinstance(cache.get(key), dict) and {"fp32", "bf16"} <= set(cache[key]):
        return {**cache[key], "cached": True}
    figures = {"fp32": round(matmul_gflops(torch.float32, shapes, device), 1),
               "bf16": round(matmul_gflops(torch.bfloat16, shapes, device), 1)}
    cache[key] = {**figures, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    with contextlib.suppress(OSError):  # a read-only home only costs the next run another probe
        atomic.write_json(path, cache)
    return {**figures, "cached": False}


def cpu_bf16(shapes: list[tuple[int, int, int]], device: torch.device, use_cache: bool = True) -> tuple[bool, str, dict]:
    """(bf16 fast here, the sentence that says so with both figures, the figures)."""
    figures = measure(shapes, device, use_cache)
    ratio = figures["bf16"] / max(figures["fp32"], 1e-9)
    has = "has AMX" if amx() else f"has no AMX ({torch.backends.cpu.get_cpu_capability()})"
    said = (f"this CPU {has}; measured at the model's shapes bf16 {figures['bf16']:,.0f} vs fp32 "
            f"{figures['fp32']:,.0f} GFLOP/s ({ratio:.2f}x)")
    fast = ratio >= FAST_MARGIN
    return fast, said + ("" if fast else f", under the {FAST_MARGIN}x that pays for autocast's casts"), figures


def choose_precision(setting: str = "auto", device: torch.device | None = None, model_dir: str | Path | None = None,
                     key: str = "train.precision") -> Precision:
    """Resolve a precision setting (auto | fp32 | bf16 | fp16) for `device` (default: pick_device()).

    `model_dir` gives the matrix shapes the CPU probe measures at; `key` names the setting in errors."""
    if setting not in SETTINGS:
        raise ConfigError(f"{key}={setting!r}: use one of {', '.join(SETTINGS)}")
    device = device or pick_device()
    if device.type == "cuda":
        return _cuda_precision(setting, device, key)
    if setting == "fp16":
        raise ConfigError(f"{key}=fp16 is for GPUs without bf16; on a CPU use {key}=bf16, fp32 or auto")
    if setting == "fp32":
        return Precision(None, device, f"{key}=fp32")
    fast, why, figures = cpu_bf16(model_shapes(model_dir), device)
    if setting == "bf16":
        return Precision(torch.bfloat16, device, f"{key}=bf16" + ("" if fast else f" (slow here: {why})"), figures)
    return Precision(torch.bfloat16 if fast else None, device, f"auto: {why}", figures)


def _cuda_precision(setting: str, device: torch.device, key: str) -> Precision:
    name = torch.cuda.get_device_name(device)
    native = cuda_native_bf16(device)
    tf32 = enable_tf32(device)
    if setting == "fp32":
        return Precision(None, device, f"{key}=fp32" + (" (TF32 matmuls on)" if tf32 else ""))
    if setting == "bf16" and not native:
        raise ConfigError(f"{key}=bf16 but this GPU ({name}) has no native bf16; use {key}=fp16 "
                          f"(autocast with a gradient scaler), fp32 or auto")
    if setting == "fp16" or (setting == "auto" and not native):
        why = f"{key}=fp16" if setting == "fp16" else f"auto: this GPU ({name}) has no native bf16, so fp16"
        return Precision(torch.float16, device, why + " with a gradient scaler")
    return Precision(torch.bfloat16, device, f"{key}=bf16" if setting == "bf16" else f"auto: this GPU ({name}) multiplies bf16 natively")


def for_inference(model, precision: Precision):
    """`model` on the precision's device, its weights in the precision's dtype, in eval mode.

    Generation casts the weights themselves (autocast would recast every weight at every
    decoding step, which costs more than the step's matmuls). Only parameters are cast, one at
    a time as they move (a GPU never holds the fp32 model): buffers such as RoPE's inv_freq
    keep fp32, as `from_pretrained(dtype=torch.bfloat16)` keeps them and as training had them.
    In fp32 the weights keep the dtype they were loaded in (`model.dtype: bfloat16` stays
    bf16). The cast is in place: merge an adapter into fp32 weights before calling this.
    """
    for p in model.parameters():
        want = precision.dtype if precision.dtype is not None and p.is_floating_point() else p.dtype
        if p.device != precision.device or p.dtype != want:
            p.data = p.data.to(device=precision.device, dtype=want)
    model.to(precision.device)  # the buffers
    return model.eval()


def oom_message(estimate_mb: int | None = None) -> str:
    """What to say when the GPU runs out of memory: the estimate and the settings that lower it."""
    have = ""
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        have = f" ({total / 2**30:.1f} GiB on {torch.cuda.get_device_name()}, {free / 2**30:.1f} GiB free now)"
    need = f"; tunekit estimated {estimate_mb:,} MB for a step" if estimate_mb else ""
    return (f"the GPU ran out of memory{have}{need}. Turn down train.batch_size (raise train.grad_accum to keep the "
            f"batch), set train.gradient_checkpointing=true, train fewer blocks (method.layers=last:K) or lower "
            f"data.max_length; eval.batch_size sets the evaluation's batch")
