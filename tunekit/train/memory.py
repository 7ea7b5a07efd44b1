"""A memory estimate printed before training, so an oversized run is stopped before it starts.

It counts the big tensors a training step holds at its peak, from the model and config
alone (nothing is run):

  weights      every parameter once (a tied embedding/head matrix counts once)
  gradients    one per trainable parameter, in its dtype
  optimizer    AdamW's two moments per trainable parameter (zeros_like the parameter:
               fp32 with the default fp32 master weights)
  activations  what autograd keeps for backward, for the blocks gradient flows through:
               batch_size x max_length x ACT_PER_TOKEN(hidden, intermediate, heads, length)
               x (blocks from the lowest trainable one up; all of them when the
               embeddings train). With gradient checkpointing a block keeps only its input
               (batch x length x hidden), plus one block's full activations while it is
               recomputed. LoRA layers add their own saved tensors (adapter_per_token).
  logits       the chunked loss (tunekit/train/loss.py) materialises at most CHUNK rows of
               vocabulary-wide logits at a time: the logits, their log-softmax and, in
               backward, their gradient: 3 x CHUNK x vocab floats (fp32).

Assumptions: every micro-batch is full (batch_size rows of max_length tokens, the worst
case), a Llama-style block (attention + gated MLP) and fused (SDPA) attention, which keeps
a log-sum-exp per head rather than the length x length probabilities. Not counted: the
Python/torch runtime (about 0.25 GB resident on a CPU) and allocator slack. Measured on
SmolLM2-135M (CPU, fp32, padded batches of 2-4 x 256 tokens) the estimate was within 10%
of the peak resident memory above the runtime for full fine-tuning; for LoRA it matched
(1.59 vs 1.58 GiB) when glibc returns freed blocks at once (train.lean_memory: true, see
tunekit/train/allocator.py); with glibc's default adaptive threshold the resident peak
ran ~1.6x higher, memory the heap kept after earlier steps' activations were freed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunekit.config import Config, DataConfig, MethodConfig, TrainConfig
from tunekit.progress import console
from tunekit.hardware import Precision, choose_precision
from tunekit.train.loss import CHUNK
from tunekit.train.methods import block_of, num_layers

GIB = 1024**3


def act_per_token(hidden: int, intermediate: int, heads: int, length: int) -> int:
    """Numbers autograd keeps per token in one Llama-style block during training.

    Counted from the tensors a block saves for backward (measured with saved-tensor hooks
    on SmolLM2 and the tiny test model): about 11 x hidden (the two RMSNorms' inputs and
    outputs, the linear layers' inputs, the rotary-embedded queries and the keys and
    values repeated to every head, the attention output), 4 x intermediate (the gated
    MLP's gate, activation, up and product), the attention's log-sum-exp per head, and
    the padding mask expanded to length x length per sequence (one row per token).
    """
    return 11 * hidden + 4 * intermediate + heads + length


def _layers_with_gradient(model) -> int:
    """How many blocks backward runs through: from the lowest one holding a trainable parameter up."""
    n = num_layers(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if any(p.requires_grad for p in inner.get_input_embeddings().parameters()):
        return n  # gradient reaches the embeddings, so it runs through every block
    blocks = [b for name in trainable if (b := block_of(name)) is not None]
    return n - min(blocks) if blocks else 0


def adapter_per_token(model, method_cfg: MethodConfig) -> int:
    """Numbers per token that the LoRA modules of all blocks keep on top of the base model's.

    Each adapted layer keeps lora_A's output (r) for lora_B's gradient; with dropout, the
    dropped copy of its input (in_features); with DoRA, the base and LoRA outputs that the
    magnitude rescaling multiplies (about 3 x out_features).
    """
    extra = 0
    for m in model.modules():
        if getattr(m, "lora_A", None) and hasattr(m, "in_features"):
            extra += method_cfg.r
            extra += m.in_features if method_cfg.dropout else 0
            extra += 3 * m.out_features if method_cfg.kind == "dora" else 0
    return extra


def estimate_memory(model, method_cfg: MethodConfig, train_cfg: TrainConfig, data_cfg: DataConfig,
                    precision: Precision | None = None, length: int | None = None, shards: int = 1) -> dict:
    """Bytes a training step needs at its peak, by part, with a total and a one-line description.

    `precision`: what the forward runs in; None resolves train.precision for the device
    training will use, as the loop does. `length`: tokens per row of the
    largest batch (the longest prepared example, which no padded batch exceeds); None
    assumes data.max_length. `shards`: the processes FSDP2 shards over (`sharded`); 1 for one
    process or DDP, where each process holds everything.
    """
    length = min(length or data_cfg.max_length, data_cfg.max_length)
    if precision is None:
        precision = choose_precision(train_cfg.precision, model_dir=getattr(model, "name_or_path", None))
    params = list(model.parameters())  # unique tensors: a tied matrix once
    trainable = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = 2 * grads  # AdamW's exp_avg and exp_avg_sq, each zeros_like(param)

    c = model.config
    hidden, inter = int(c.hidden_size), int(getattr(c, "intermediate_size", 4 * c.hidden_size))
    heads = int(c.num_attention_heads)
    # bf16/fp16 autocast keeps most saved activations in 16 bits; otherwise they have the weights' dtype.
    act_bytes = 2 if precision.dtype is not None else params[0].element_size()
    tokens = train_cfg.batch_size * length
    blocks = _layers_with_gradient(model)
    adapters = adapter_per_token(model, method_cfg) // max(blocks, 1)  # spread over the blocks gradient runs through
    per_block = tokens * (act_per_token(hidden, inter, heads, length) + adapters) * act_bytes
    if train_cfg.gradient_checkpointing and blocks:
        activations = blocks * tokens * hidden * act_bytes + per_block
    else:
        activations = blocks * per_block
    logits = 3 * min(CHUNK, tokens) * int(c.vocab_size) * 4
    if shards > 1:
        weights, grads, optimizer = sharded(model, shards, weights, grads, optimizer)
    total = weights + grads + optimizer + activations + logits
    parts = {"weights": weights, "gradients": grads, "optimizer": optimizer, "activations": activations, "logits": logits}
    text = (f"{total / GIB:.2f} GiB estimated" + (f" per process (sharded over {shards})" if shards > 1 else "") + ": "
            + ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items())
            + f" (batch {train_cfg.batch_size} x {length} tokens, backward through {blocks} of "
            f"{num_layers(model)} blocks{', gradient checkpointing' if train_cfg.gradient_checkpointing else ''})")
    return {**parts, "total": total, "layers_with_gradient": blocks, "description": text}


def sharded(model, shards: int, weights: int, grads: int, optimizer: int) -> tuple[int, int, int]:
    """(weights, gradients, optimiser state) one of `shards` FSDP2 processes holds at the peak.

    Each keeps 1/shards of every block's weights, gradients and moments. Around a block's forward
    and backward its whole weights are gathered, and the next block's are prefetched: two blocks'
    weights, and one block's whole gradients before they are reduce-scattered. The root's
    parameters (embeddings, final norm, output layer) stay gathered for the whole step."""
    per_block: dict[int, list[int]] = {}
    for name, p in model.named_parameters():
        b = block_of(name)
        if b is not None:
            w = per_block.setdefault(b, [0, 0])
            w[0] += p.numel() * p.element_size()
            w[1] += p.numel() * p.element_size() if p.requires_grad else 0
    in_blocks = sum(w for w, _ in per_block.values())
    widest, widest_grad = max(per_block.values(), default=[0, 0])
    root = weights - in_blocks
    return (root + in_blocks // shards + 2 * widest, grads // shards + widest_grad, optimizer // shards)


def available_bytes() -> tuple[int, str] | None:
    """Free memory on the device training uses: the GPU's, else the machine's (Linux)."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0], "the GPU has"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "the machine has"
    except OSError:
        pass
    return None


def print_memory_estimate(model, cfg: Config, length: int | None = None, precision: Precision | None = None,
                          shards: int = 1) -> dict:
    """Print the estimate before training, beside the memory available; returns the estimate."""
    est = estimate_memory(model, cfg.method, cfg.train, cfg.data, precision=precision, length=length, shards=shards)
    line = est["description"]
    avail = available_bytes()
    if avail:
        line += f"; {avail[1]} {avail[0] / GIB:.1f} GiB available"
    console.print(f"[bold]memory[/] {line}")
    return est
