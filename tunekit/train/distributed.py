"""Training in several processes (torchrun) on PyTorch's own engine, equal to one process.

The process group itself (env://, gloo or nccl, the timeout, rank 0's decisions) is
tunekit/hardware.py's; this module is what training adds on top:

- Strategy (`train.distributed`): DDP keeps a whole replica per process and all-reduces
  gradients; FSDP2 (`fully_shard`, per decoder layer, then the root) shards weights, gradients
  and optimiser state. `auto`: DDP for LoRA kinds, whose gradients are small; for a full fine-tune
  FSDP2 when the memory estimate says a replica does not fit one process.
- The same update whatever the number of processes: every process builds the same global
  micro-batches from the same seed (`Plan.micro_batches`, pure in (seed, step)) and computes its
  share of them (`Ranks.share`): whole micro-batches when a step's count (train.grad_accum)
  divides among the processes, else every `world`-th example of each (`shard`). No sampler, so
  no padding by repeated examples and none dropped. The step's supervised tokens are counted
  across processes (one all_reduce) and each process scales its summed loss by world / global
  tokens, which undoes the gradient averaging of DDP and FSDP2: the sum of every token's
  gradient over the whole step, as one process computes it.
- Gradients are synchronised on the last micro-batch of a step only (`no_sync` for DDP,
  `set_requires_gradient_sync` for FSDP2): it saves traffic and changes nothing else.

DDP and FSDP2 act in a module's forward (DDP prepares its gradient reduction there, FSDP2
gathers the root's shards), and tunekit's loss runs the decoder and the output layer itself
(tunekit/train/loss.py), so both wrap `LossForward`, whose forward is that loss.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from tunekit import hardware
from tunekit.config import Config
from tunekit.models.logits import inner_model
from tunekit.train.loss import supervised_loss_sum
from tunekit.train.memory import available_bytes, estimate_memory

STRATEGIES = ("ddp", "fsdp2")
SKIP_SYNC = True
"""Synchronise gradients only on a step's last micro-batch. The tests turn it off to show that it
changes nothing but the traffic."""


class LossForward(nn.Module):
    """`model`'s summed loss (loss.supervised_loss_sum) as a module's forward, for DDP and FSDP2 to wrap."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, position_ids, rows, distill, kl_weight: float):
        return supervised_loss_sum(self.model, input_ids, attention_mask, labels, position_ids, rows, distill, kl_weight)


@dataclass
class Ranks:
    """This process's part in a job of several: the wrapped model and the collectives a step needs."""

    rank: int
    world: int
    strategy: str  # "ddp" or "fsdp2"
    why: str  # the sentence saying why this strategy
    wrapped: nn.Module  # DDP(LossForward(model)) or LossForward(model) after fully_shard
    model: nn.Module  # the PEFT or transformers model inside, as one process has it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self, grad_accum: int, batch_size: int) -> str:
        """The processes, the strategy and why, and how a step is shared (`share`)."""
        head = f"{self.world} processes, {self.strategy}: {self.why}"
        if grad_accum % self.world == 0:
            return f"{head}; each takes whole micro-batches (train.grad_accum {grad_accum}), so the numbers are one process's"
        k = self.world // math.gcd(grad_accum, self.world)  # the least factor that makes grad_accum divide
        return (f"{head}; each micro-batch is cut among them: one process's update in fp32, not bit for bit in bf16 "
                f"(train.grad_accum={grad_accum * k} train.batch_size={max(1, batch_size // k)} keeps the step's size "
                f"and deals whole micro-batches)")

    def share(self, micro_batches: list[list[int]]) -> list[tuple[list[int], float]]:
        """This process's forward and backward passes in one optimiser step: (examples, weight) each.

        When the step's micro-batches divide evenly among the processes, each takes whole ones (the
        k-th goes to process k % world): the very tensors one process computes, so their gradients
        are one process's to the bit in any precision, and only the order of the fp32 sums across
        processes differs. bf16 rounds a matmul's output once, so a micro-batch cut in two would
        round its halves' gradients apart, and the run would drift from one process's.

        Otherwise every micro-batch is cut among the processes (`shard`): the same examples and the
        same normalisation, in smaller tensors (equal to one process in fp32, not bit for bit in
        bf16). A micro-batch smaller than the world leaves some processes without an example; they
        still run one (the micro-batch's first) with weight 0, as every process must take part in
        each backward's collectives."""
        if len(micro_batches) % self.world == 0:
            return [(mb, 1.0) for mb in micro_batches[self.rank :: self.world]]
        out = []
        for indices in micro_batches:
            mine = shard(indices, self.rank, self.world)
            out.append((mine, 1.0) if mine else (indices[:1], 0.0))
        return out

    def totals(self, supervised: int, tokens: int, stop: bool) -> tuple[int, int, bool]:
        """The step's supervised tokens and tokens over every process, and whether any was asked to stop
        (SIGTERM): one all_reduce, so every process saves and stops at the same step."""
        t = torch.tensor([supervised, tokens, int(stop)], dtype=torch.long)  # on the CPU: gloo carries it
        dist.all_reduce(t)
        return int(t[0]), int(t[1]), bool(t[2])

    def total(self, x: torch.Tensor) -> torch.Tensor:
        """`x` summed over every process (the step's loss)."""
        dist.all_reduce(x)
        return x

    def sync(self, last: bool):
        """A context for one micro-batch's forward and backward: gradients are reduced across processes
        only on the step's `last` one (unless SKIP_SYNC is off)."""
        reduce = last or not SKIP_SYNC
        if self.strategy == "ddp":
            return contextlib.nullcontext() if reduce else self.wrapped.no_sync()
        self.wrapped.set_requires_gradient_sync(reduce)
        return contextlib.nullcontext()

    def evaluator(self) -> nn.Module:
        """What computes a held-out loss: every process computes all of it, the same numbers. DDP's
        own module (its forward would prepare a gradient reduction); FSDP2's root, which gathers the shards."""
        return self.wrapped.module if self.strategy == "ddp" else self.wrapped


def shard(indices: list[int], rank: int, world: int) -> list[int]:
    """The examples of a global micro-batch that process `rank` of `world` computes: the i-th goes to
    process i % world. Every example to exactly one process: none repeated (torch's DistributedSampler
    repeats examples to even out the last batch), none dropped, whatever the count."""
    return indices[rank::world]


def is_wrapped(model) -> bool:
    """Whether `model` is LossForward (FSDP2's root) or DDP around it: its forward is the summed loss."""
    return isinstance(model, (LossForward, nn.parallel.DistributedDataParallel))


def choose_strategy(cfg: Config, model, precision, widest: int | None) -> tuple[str, str]:
    """(ddp or fsdp2, why), decided by rank 0 for every process (the free memory each sees differs)."""
    setting = cfg.train.distributed
    if setting != "auto":
        return setting, f"train.distributed={setting}"

    def decide() -> tuple[str, str]:
        need = estimate_memory(model, cfg.method, cfg.train, cfg.data, precision, widest)["total"]
        return auto_strategy(cfg.method.kind, need, free_per_process(precision.device))

    return hardware.agree(decide)


def free_per_process(device: torch.device) -> tuple[int, str] | None:
    """(bytes, where) one process may use: its GPU's free memory, or the machine's shared by its processes."""
    have = available_bytes()
    if have is None:
        return None
    free, where = have
    return (free // hardware.local_world_size() if device.type == "cpu" else free), where


def auto_strategy(kind: str, need: int, free: tuple[int, str] | None) -> tuple[str, str]:
    """What train.distributed=auto picks for `kind` when a whole replica needs `need` bytes and a process has `free`."""
    if kind != "full":
        return "ddp", f"auto: method.kind {kind} trains small adapters, whose gradients are cheap to all-reduce"
    if free is None:
        return "ddp", "auto: full fine-tune, and this machine's free memory is unknown"
    gib = 1024**3
    if need > free[0]:
        return "fsdp2", (f"auto: a whole replica needs about {need / gib:.1f} GiB and {free[1]} {free[0] / gib:.1f} GiB "
                         "per process, so weights, gradients and optimiser state are sharded")
    return "ddp", f"auto: a whole replica (about {need / gib:.1f} GiB) fits the {free[0] / gib:.1f} GiB per process"


def decoder_layers(model) -> list[nn.Module]:
    """The decoder's blocks: FSDP2 shards each as one unit (one all-gather per block in forward)."""
    inner = inner_model(model)
    n = int(inner.config.num_hidden_layers)
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else inner
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) != n:
        layers = next((m for m in inner.modules() if isinstance(m, nn.ModuleList) and len(m) == n), None)
    if layers is None:
        from tunekit.errors import ModelError

        raise ModelError(f"cannot find the {n} decoder blocks of {type(inner).__name__} to shard; "
                         "set train.distributed=ddp")
    return list(layers)


def wrap(model: nn.Module, strategy: str, device: torch.device, why: str,
         gather_dtype: torch.dtype | None = None) -> Ranks:
    """`model` (already on `device`) wrapped for `strategy` over the whole process group.

    The device mesh is always explicit: without one, fully_shard assumes CUDA and fails on a CPU
    (pytorch#132471). FSDP2 shards each decoder block, then the root (embeddings, final norm,
    output layer), as torchtune and accelerate do; build the optimiser after this, over the
    sharded parameters. `gather_dtype`: FSDP2 gathers the weights in it for the forward and
    backward (the shards and the optimiser stay fp32, gradients are reduced in fp32); a LoRA kind
    in bf16 passes bf16, so it computes with the bf16 weights one process keeps (compute.cast_frozen)."""
    from torch.distributed.device_mesh import init_device_mesh

    world = dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    core = LossForward(model)
    if strategy == "ddp":
        # No buffer broadcast at each forward: the buffers (rotary frequencies) are the same everywhere.
        wrapped = nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None,
                                                      device_mesh=mesh, forward_sync_buffers=False)
    else:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=gather_dtype, reduce_dtype=torch.float32 if gather_dtype else None)
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        wrapped = fully_shard(core, mesh=mesh, mp_policy=policy)
    return Ranks(dist.get_rank(), world, strategy, why, wrapped, model)


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_'s total norm as a plain tensor (under FSDP2 it is a DTensor over the shards)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
