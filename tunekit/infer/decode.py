"""The decode loop: every answer tunekit writes (eval, chat, generate, the export checks, the
server) comes out of `Batch.step`.

Our own loop rather than `generate`:
- A row that has written its stop token leaves the batch (its KV cache rows are dropped), so the
  remaining steps only pay for rows still writing. `generate` keeps computing finished rows until
  the longest answer ends, which on a CPU is most of the eval stage's time when a base model
  rambles beside a tuned model that answers in one sentence.
- Rows join a running batch (`extend`): the server's requests arrive while others are being
  answered (continuous batching).
- Each row has its own stop tokens, length, sampling (greedy unless a `Sampler` is given) and
  adapter (PEFT's mixed-adapter batches, see infer/adapters.py); `generate` has one of each.
- `generate` fills every setting left unset from the model's generation_config (a repetition
  penalty or top_k shipped with a model would change "greedy" answers).

Prompts are sorted by length and left-padded so every row's next token sits in the last column,
with position ids counted from each row's first real token, as `generate` does.

What makes it faster than `generate` while writing the same tokens. Measured on SmolLM2-135M
fp32, 2 CPU threads, one batch of 64 held-out prompts (36-60 tokens), 32 new tokens: `generate`
21.4-22.4 s, this loop 13.0-13.7 s (20.0-23.0 s before these measures); prefill 7.6-10.2 s ->
3.4 s, a decode step 390-403 -> 357-361 ms.
- Shared prefix (cache.SharedPrefix): every chat prompt starts with the template's preamble (24 of
  SmolLM2's ~44 tokens: its default system prompt). It runs once, at batch 1, and its keys/values
  are copied into every row; only the rest of each prompt is prefilled. Cache columns per row:
  [prefix][left padding][rest of the prompt]; the padding is masked and position ids go on from
  the prefix. Prefill 8.7-10.2 s -> 6.2-6.4 s.
- Prefill in length groups (`_prefill_groups`): rows sorted by length are prefilled a group at a
  time, each at its own width, right-aligned in the one cache, so short prompts do not pay for
  the longest one's padding. 6.0-7.4 s -> 3.9-4.9 s.
- Preallocated KV cache (cache.py). Decoder step 339 -> 327 ms.
- Output layer in vocabulary chunks (`_chunked_argmax`): greedy needs only the argmax, so the
  49152-wide row of logits never exists; a 1024-wide chunk's logits stay in cache. 76 -> 66 ms a step.
- Not done: building the 4D attention mask ourselves; transformers takes 0.23 ms a step.

Equality with `generate` is checked by tests/eval/test_generate_fast.py (tiny models) and
bench/vs_trl.py (the real one; all 166 held-out prompts give identical tokens). A row's answer
does not depend on the rows beside it beyond fp32 rounding: every row's math is its own (masked
padding adds exact zeros), but a matmul over more rows may sum in another order. Greedy tokens
agree wherever the top two logits are further apart than that rounding (tests/infer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tunekit.infer.cache import SharedPrefix, is_slab, join_caches, plain_layer_count, slab_cache
from tunekit.models.logits import OutputLayer, inner_model, output_layer

# Rows of the output layer per matmul: 1024 x 64 rows of fp32 logits (256 KB) stay in the CPU cache.
HEAD_CHUNK = 1024
# A prefill forward's fixed cost in padded prompt tokens (SmolLM2-135M on CPU): prompts are
# grouped by length only where a group saves more padding than this.
PREFILL_OVERHEAD = 16


@dataclass(eq=False)
class Row:
    """One answer being written. `finish`: None while writing, then "stop" (a stop token, not kept),
    "length" (max_new tokens written) or "cancelled" (`cancel()`, from any thread)."""

    prompt: list[int]
    max_new: int
    stop: set[int] | frozenset[int]
    adapter: str | None = None  # the name of an adapter loaded on the model; None: the model as it is
    sample: Callable[[torch.Tensor], int] | None = None  # fp32 logits -> token; None: greedy
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None

    def push(self, token: int) -> None:
        if self.finish is not None:
            return
        if token in self.stop:
            self.finish = "stop"
            return
        self.tokens.append(token)
        if len(self.tokens) >= self.max_new:
            self.finish = "length"

    def cancel(self) -> None:
        """Leave the batch at the next step (a client went away, a stop string was written)."""
        if self.finish is None:
            self.finish = "cancelled"


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) with every prompt right-aligned, so all rows continue at the last column."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    return ids, mask


def _decoder_and_head(model):
    """(decoder, output layer) when the logits can be made from the decoder's last hidden state
    (models.logits, which also applies a family's soft-cap or scaling); None otherwise (then
    `model(...)` computes the logits)."""
    out = output_layer(model)
    return None if out is None else (inner_model(model).get_decoder(), out)


def _chunked_argmax(h: torch.Tensor, out: OutputLayer) -> torch.Tensor:
    """argmax of `out(h)` over the vocabulary, HEAD_CHUNK rows of the output weight at a time.

    The same logits as one matmul, post-processed per chunk (elementwise, so the same values);
    ties go to the lowest index as in torch.argmax: the first chunk holding the maximum wins,
    and within it torch.max's first index. A LoRA-wrapped head runs whole.
    """
    if not out.plain_linear:
        return out(h).argmax(dim=-1)
    weight, bias, post = out.head.weight, out.head.bias, out.post
    h = post.before(h)
    values, indices = [], []
    for s in range(0, weight.shape[0], HEAD_CHUNK):
        logits = F.linear(h, weight[s : s + HEAD_CHUNK], None if bias is None else bias[s : s + HEAD_CHUNK])
        v, i = (logits if post.identity else post.after(logits.float())).max(dim=-1)
        values.append(v)
        indices.append(i + s)
    which = torch.stack(values, dim=-1).argmax(dim=-1, keepdim=True)
    return torch.stack(indices, dim=-1).gather(-1, which).squeeze(-1)


def _next_tokens(model, parts, rows: list[Row], **inputs) -> torch.Tensor:
    """Next token of every row after feeding `inputs` (ids, mask, positions, cache): the argmax, or
    the row's own sample of the fp32 logits."""
    sampled = [j for j, row in enumerate(rows) if row.sample is not None]
    if parts is None:
        logits = model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1]
    else:
        decoder, out = parts
        hidden = decoder(**inputs, use_cache=True).last_hidden_state[:, -1]
        if not sampled:
            return _chunked_argmax(hidden, out)
        logits = out(hidden)
    tokens = logits.argmax(-1)
    for j in sampled:
        tokens[j] = rows[j].sample(logits[j].float())
    return tokens


def _prefill_groups(lengths: list[int]) -> list[tuple[int, int]]:
    """Runs [start, end) of rows (sorted by length) to prefill one forward each, at the run's own
    width: fewest padded tokens, plus PREFILL_OVERHEAD tokens' worth of time per forward."""
    n = len(lengths)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start] + PREFILL_OVERHEAD + (end - start) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs, end = [], n
    while end:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


class Batch:
    """Rows decoding together: built by prefilling their prompts (which writes each row's first
    token), then `step()` writes one more token per row until every row has finished.

    `shared`: a prefix all prompts start with, kept across batches (greedy_batches passes the one of
    all its prompts); by default the rows' own longest common prefix, when they share one adapter.
    `adapters`: an infer.adapters.Adapters when rows name adapters (a mixed-adapter batch).
    """

    def __init__(self, model, rows: list[Row], pad_id: int, shared: SharedPrefix | None = None, adapters=None):
        self.model, self.adapters = model, adapters
        self.left: list[Row] = []  # rows dropped from the batch once finished (see take_left)
        self.parts, self.n_layers = _decoder_and_head(model), plain_layer_count(model)
        one_adapter = len({row.adapter for row in rows}) == 1
        shared = SharedPrefix([]) if not (self.n_layers and one_adapter) else shared or SharedPrefix.of(
            [row.prompt for row in rows])
        prefix = len(shared.tokens)
        assert prefix < min(len(r.prompt) for r in rows) and all(r.prompt[:prefix] == shared.tokens for r in rows)
        self.rows = sorted(rows, key=lambda r: len(r.prompt))  # the cache's row order
        suffixes = [r.prompt[prefix:] for r in self.rows]
        ids, mask = (t.to(model.device) for t in left_pad(suffixes, pad_id))
        positions = prefix + (mask.cumsum(-1) - 1).clamp(min=0)
        capacity = prefix + ids.shape[1] + max(r.max_new for r in rows)
        self.cache = self._start_cache(shared, capacity)
        self.mask = torch.cat([mask.new_ones((len(rows), prefix)), mask], dim=1)
        self.last_pos = positions[:, -1]
        self._take(self._prefill(ids, positions, [len(s) for s in suffixes]))

    # -- forwards ------------------------------------------------------------------------------

    def _adapters_for(self, rows: list[Row]):
        return contextlib.nullcontext() if self.adapters is None else self.adapters.rows([r.adapter for r in rows])

    def _next(self, rows: list[Row], **inputs) -> torch.Tensor:
        with torch.no_grad(), self._adapters_for(rows):
            return _next_tokens(self.model, self.parts, rows, **inputs)

    def _start_cache(self, prefix: SharedPrefix, capacity: int):
        """The cache the prompts' prefill writes into: DynamicCache for models whose layers are not all
        plain, else slab layers, holding the shared prefix's keys/values in their first columns."""
        from transformers import DynamicCache

        if not self.n_layers:
            return DynamicCache(config=self.model.config)  # its layers are never all slabs: one prefill forward
        if not prefix.tokens:
            return slab_cache(len(self.rows), capacity, self.n_layers)
        if prefix.kv is None:
            # The prefix at batch 1 (its output is not needed: every row goes on with its own suffix).
            first = slab_cache(1, len(prefix.tokens), self.n_layers)
            ids = torch.tensor([prefix.tokens], device=self.model.device)
            with torch.no_grad(), self._adapters_for(self.rows[:1]):
                if self.parts is None:
                    self.model(input_ids=ids, cache=first, use_cache=True, logits_to_keep=1)
                else:
                    self.parts[0](input_ids=ids, cache=first, use_cache=True)
            prefix.kv = [(layer.keys, layer.values) for layer in first.layers]
        return slab_cache(len(self.rows), capacity, self.n_layers, prefix.kv)

    def _prefill(self, ids: torch.Tensor, positions: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """First answer token of every row. Into slab layers, rows (sorted by length) go in groups, each
        at its own width with its columns right-aligned in the cache, so short prompts pay for little padding."""
        cache, mask = self.cache, self.mask
        if not is_slab(cache):  # a DynamicCache
            return self._next(self.rows, input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache)
        width, total, out = ids.shape[1], mask.shape[1], []
        for start, end in _prefill_groups(lengths):
            rows, cols = slice(start, end), width - lengths[end - 1]  # the group's own columns: cols..width
            for layer in cache.layers:
                layer.focus(rows, total - width + cols)
            out.append(self._next(self.rows[rows], input_ids=ids[rows, cols:], attention_mask=mask[rows],
                                  position_ids=positions[rows, cols:], cache=cache))
        for layer in cache.layers:
            layer.focus(slice(None), total)
        return torch.cat(out)

    def _take(self, tokens: torch.Tensor) -> None:
        self.nxt = tokens
        for row, tok in zip(self.rows, tokens.tolist(), strict=True):
            row.push(tok)

    # -- the loop --------------------------------------------------------------------------------

    def _drop_finished(self) -> None:
        keep = [j for j, row in enumerate(self.rows) if row.finish is None]
        if len(keep) == len(self.rows):
            return
        self.left += [row for row in self.rows if row.finish is not None]
        if not keep:
            self.rows, self.cache = [], None
            return
        sel = torch.tensor(keep, device=self.nxt.device)
        self.cache.batch_select_indices(sel)
        self.nxt, self.mask, self.last_pos = self.nxt[sel], self.mask[sel], self.last_pos[sel]
        self.rows = [self.rows[j] for j in keep]

    def step(self) -> bool:
        """Drop the rows that have finished, then write one token for each of the others; False (and
        nothing done) when no row is left."""
        self._drop_finished()
        if not self.rows:
            return False
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
        self.last_pos = self.last_pos + 1
        self._take(self._next(self.rows, input_ids=self.nxt[:, None], attention_mask=self.mask,
                              position_ids=self.last_pos[:, None], cache=self.cache))
        return True

    def use(self, model) -> None:
        """Go on with `model`: the same weights, rewrapped (PEFT wraps the base when its first adapter loads)."""
        if model is not self.model:
            self.model, self.parts = model, _decoder_and_head(model)

    def take_left(self) -> list[Row]:
        """The rows that have left the batch since the last call (a row cancelled from another thread
        between two steps leaves without having been seen finished by the stepping thread)."""
        left, self.left = self.left, []
        return left

    @property
    def joinable(self) -> bool:
        """Whether other batches can join this one (slab caches; see cache.py)."""
        return self.cache is None or is_slab(self.cache)

    def extend(self, other: Batch) -> None:
        """Take `other`'s rows (prefilled on their own, each with its first token) into this batch.
        Both caches go into one, right-aligned at the wider one's width; columns no row uses are left out."""
        self._drop_finished()
        other._drop_finished()
        if not other.rows:
            return
        self.left += other.take_left()
        if not self.rows:
            self.rows, self.cache, self.mask, self.last_pos, self.nxt = (
                other.rows, other.cache, other.mask, other.last_pos, other.nxt)
            return
        assert self.joinable and other.joinable
        self.use(other.model)
        a_from, b_from = _first_used(self.mask), _first_used(other.mask)
        width = max(self.mask.shape[1] - a_from, other.mask.shape[1] - b_from)
        rows = self.rows + other.rows
        capacity = width + max(r.max_new - len(r.tokens) for r in rows)
        self.cache = join_caches(self.cache, a_from, other.cache, b_from, width, capacity)
        self.mask = torch.cat([_pad_left(self.mask[:, a_from:], width), _pad_left(other.mask[:, b_from:], width)])
        self.last_pos = torch.cat([self.last_pos, other.last_pos])
        self.nxt = torch.cat([self.nxt, other.nxt])
        self.rows = rows


def _first_used(mask: torch.Tensor) -> int:
    """The first cache column some row attends to."""
    return int(mask.any(dim=0).int().argmax())


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([mask.new_zeros((mask.shape[0], width - mask.shape[1])), mask], dim=1)
