"""Cross-entropy over supervised positions only, in chunks.

A causal LM's full logits are batch x length x vocabulary floats (8 x 512 x 49152 x 4
bytes = 800 MB for SmolLM2), most of them for prompt tokens that carry no loss. We run
the decoder to hidden states, keep the rows whose next token is supervised, and apply
the output layer to those rows a chunk at a time, with the family's own post-processing of
logits (models/logits.py: soft-capping, scaling). The loss is returned as a *sum*; the
caller divides by the supervised tokens of the whole optimiser step, so gradient
accumulation gives the same loss as one big batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunekit.data.template import IGNORE
from tunekit.errors import ModelError
from tunekit.models.logits import inner_model, output_layer

CHUNK = 1024


def body_and_head(model) -> tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(body, head): `body(**inputs)` gives per-position vectors that `head` turns into fp32 logits.

    Normally the decoder's last hidden states and the model's output layer with its family's
    post-processing (models.logits: Gemma's soft-cap, Granite's and Cohere's scaling), so only
    supervised rows meet the vocabulary. For a family whose logits tunekit cannot reproduce, the
    model's own forward gives the full logits and `head` only casts: correct, with more memory.
    """
    out = output_layer(model)
    if out is not None:
        decoder = inner_model(model).get_decoder()
        return (lambda **inputs: decoder(**inputs, use_cache=False).last_hidden_state), out
    return (lambda **inputs: model(**inputs, use_cache=False).logits), _as_fp32


def _as_fp32(logits: torch.Tensor) -> torch.Tensor:
    return logits.float()


def supervised_rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, position, target id) of every next-token prediction that carries loss.

    Computed where `labels` lives: the loop calls it on the CPU batch before moving it, since a
    boolean mask applied on a GPU makes the host wait for the device to learn the output's size.
    """
    targets = labels[:, 1:]
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)
    return rows, cols, targets[rows, cols]


def supervised_loss_sum(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                        position_ids: torch.Tensor | None = None,
                        rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                        distill: torch.Tensor | None = None, kl_weight: float = 0.0) -> tuple[torch.Tensor, int]:
    """(sum of token cross-entropies over supervised positions, number of such positions).

    `attention_mask` is a (B, T) padding mask, or a packed batch's (B, 1, T, T) bool block
    mask, which goes with its `position_ids`. `rows`: `supervised_rows(labels)` when already
    computed (on the device of the other tensors). With `kl_weight` and a (B, T) `distill`
    mask, `kl_weight` times the summed KL(base || tuned) of the supervised positions of those
    tokens is added (`distill_sum`).
    """
    body, head = body_and_head(model)
    mask = attention_mask
    if attention_mask.dim() == 4:
        inner = inner_model(model)
        mask = additive_mask(attention_mask, inner.get_input_embeddings().weight.dtype, inner.config)
    hidden = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
    row, col, y = rows if rows is not None else supervised_rows(labels)
    h = hidden[row, col]  # the hidden state at each position whose next token is supervised
    total = _summed(_chunk_loss, head, h, y)
    if kl_weight and distill is not None:
        total = total + kl_weight * distill_sum(model, body, head, (input_ids, mask, position_ids), h, row, col, distill)
    return total, int(y.numel())


def _summed(fn, head, h: torch.Tensor, *other: torch.Tensor) -> torch.Tensor:
    """fn(head, rows...) summed over chunks of CHUNK rows.

    Several chunks: each chunk's logits are recomputed in backward instead of kept alive,
    so memory stays at one chunk's logits."""
    if h.shape[0] <= CHUNK:
        return fn(head, h, *other)
    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], CHUNK):
        total = total + checkpoint(fn, head, h[s : s + CHUNK], *(t[s : s + CHUNK] for t in other), use_reentrant=False)
    return total


def distill_sum(model, body, head, inputs: tuple, h: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                distill: torch.Tensor) -> torch.Tensor:
    """Summed KL(base || tuned) of next-token distributions at the supervised positions `(row, col)`
    whose target token is marked in `distill`; `h` holds the tuned model's `body` output there.

        KL(p_base || p_tuned) = sum_v p_base(v) * (log p_base(v) - log p_tuned(v))

    The base model is this model with its adapters disabled (PEFT's `disable_adapter`), so
    there is no second copy in memory; only the rows holding marked tokens run through it."""
    pick = distill[:, 1:][row, col]
    if not bool(pick.any()):
        return h.new_zeros((), dtype=torch.float32)
    r, c, h = row[pick], col[pick], h[pick]
    sub, where = torch.unique(r, return_inverse=True)  # the batch rows to run, and each position's row among them
    ids, mask, positions = inputs
    with torch.no_grad(), model.disable_adapter():
        base = body(input_ids=ids[sub], attention_mask=mask[sub], position_ids=None if positions is None else positions[sub])
    return _summed(_chunk_kl, head, h, base[where, c])


def _chunk_kl(head: torch.nn.Module, h: torch.Tensor, h_base: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = F.log_softmax(head(h_base), dim=-1)
    return F.kl_div(F.log_softmax(head(h), dim=-1), target, log_target=True, reduction="sum")


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, config) -> torch.Tensor:
    """A 4D bool mask (True = may attend) as the additive float mask the attention adds to its scores.

    transformers passes a 4D mask to the attention function as is. SDPA would take bools,
    but eager attention adds the mask to the scores, so bools would silently become +0/+1;
    an additive mask in the model's dtype (SDPA wants the query's dtype) is right for both.
    The dtype's minimum rather than -inf keeps a fully masked row finite.
    """
    impl = getattr(config, "_attn_implementation", "sdpa")
    if impl not in ("sdpa", "eager"):
        raise ModelError(f"packed batches need the 'sdpa' or 'eager' attention implementation, not {impl!r}; "
                         "set data.packing=false or load the model with sdpa attention")
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def _chunk_loss(head, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h), y, reduction="sum")
