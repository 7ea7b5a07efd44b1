"""The KV cache the decode loop writes: one preallocated slab per layer, rows that can leave and join.

A slab is sized for the batch's whole answer and written in place; transformers' DynamicLayer
grows by `torch.cat`, copying the whole cache in every layer at every step (a SmolLM2 decode step
339 -> 327 ms). Columns are shared by all rows: row r's cache is [its prompt, right-aligned at
the column where every row writes next][answer so far]; the columns left of a row's prompt are
padding, zeroed (masked, but they must be finite: a NaN key times a zero weight is NaN).

Joining (`join`) is what continuous batching needs: rows prefilled on their own go into the
running batch, right-aligned to its current column (or the batch's rows are shifted right when
the newcomers are longer), and columns no row uses any more are dropped on the way.

Only models whose cache layers are all plain growing DynamicLayers (no sliding window, no linear
attention, no KV sharing) use slabs: a sliding window counts columns, so padding would shift it.
Others get transformers' DynamicCache, one prefill forward, and batches that cannot be joined.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def common_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving every prompt at least one token of its own
    (the last prompt token must go through the suffix prefill: its hidden state gives the first answer token)."""
    limit = min(len(p) for p in prompts) - 1
    first = prompts[0]
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@dataclass
class SharedPrefix:
    """The token prefix every prompt of an eval call starts with and, once run, its keys/values per
    layer: the chat template's preamble then runs once for all batches, not once per batch.
    The keys/values belong to the model (and adapter) that ran them."""

    tokens: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def of(cls, prompts: list[list[int]]) -> SharedPrefix:
        return cls(prompts[0][: common_prefix(prompts)])


class _SlabLayer:
    """Body of a DynamicLayer whose keys/values live in a buffer preallocated to the batch's final
    width: `update` writes in place and returns views. `slab_layer_class` mixes it in, so
    transformers is imported lazily.

    `focus` narrows the layer to a run of rows whose columns start later (a prefill group): columns
    between the prefix and that start are padding, zeroed so that masking them gives exact zeros.
    """

    is_croppable = False

    def __init__(self, capacity: int, batch: int, prefix_kv: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.capacity, self.batch, self.length, self.valid, self.rows = capacity, batch, 0, 0, slice(None)
        if prefix_kv is not None:  # the shared prefix's keys/values (batch 1), copied to every row
            k, v = prefix_kv
            self._allocate(k, v)
            self.length = self.valid = k.shape[-2]
            self.k_buf[:, :, : self.length] = k
            self.v_buf[:, :, : self.length] = v
            self._views()

    def _allocate(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_buf = k.new_empty((self.batch, k.shape[1], self.capacity, k.shape[3]))
        self.v_buf = v.new_empty((self.batch, v.shape[1], self.capacity, v.shape[3]))
        self.device, self.is_initialized = k.device, True

    def _views(self) -> None:
        self.keys = self.k_buf[self.rows, :, : self.length]
        self.values = self.v_buf[self.rows, :, : self.length]

    def focus(self, rows: slice, start: int) -> None:
        """Write the next update into `rows` from column `start` on; `rows=slice(None)`: all rows again."""
        self.rows, self.length = rows, start
        if rows == slice(None):
            self.valid = start
            self._views()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._allocate(key_states, value_states)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.length > self.valid:  # a group's left padding: masked, but must be finite
            self.k_buf[self.rows, :, self.valid : self.length] = 0
            self.v_buf[self.rows, :, self.valid : self.length] = 0
        end = self.length + key_states.shape[-2]
        self.k_buf[self.rows, :, self.length : end] = key_states
        self.v_buf[self.rows, :, self.length : end] = value_states
        self.length = end
        if self.rows == slice(None):
            self.valid = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows `indices` (rows that finished leave). Only written columns are copied."""
        if self.is_initialized:
            self.batch = len(indices)
            k, v = self.k_buf, self.v_buf
            self._allocate(k, v)
            self.k_buf[:, :, : self.length] = k[indices, :, : self.length]
            self.v_buf[:, :, : self.length] = v[indices, :, : self.length]
            self._views()

    def join(self, a: _SlabLayer, a_from: int, b: _SlabLayer, b_from: int, width: int) -> None:
        """Hold `a`'s rows then `b`'s, each layer's columns from `*_from` on right-aligned at `width`;
        the columns left of them are zeroed padding. Called on a fresh layer sized for both."""
        self._allocate(a.k_buf, a.v_buf)
        for buf, src_a, src_b in ((self.k_buf, a.k_buf, b.k_buf), (self.v_buf, a.v_buf, b.v_buf)):
            for rows, src, layer, start in ((slice(0, a.batch), src_a, a, a_from),
                                            (slice(a.batch, a.batch + b.batch), src_b, b, b_from)):
                n = layer.length - start
                buf[rows, :, : width - n] = 0
                buf[rows, :, width - n : width] = src[:, :, start : layer.length]
        self.length = self.valid = width
        self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("the decode loop never repeats rows")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("the decode loop never crops")


@functools.cache
def slab_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    return type("SlabLayer", (_SlabLayer, DynamicLayer), {"__doc__": _SlabLayer.__doc__})


def plain_layer_count(model) -> int:
    """Number of cache layers when every one is a plain growing DynamicLayer, else 0: only then may
    slabs, the padding gap after a shared prefix, and joining batches be used."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layers = DynamicCache(config=model.config).layers
    return len(layers) if layers and all(type(layer) is DynamicLayer for layer in layers) else 0


def is_slab(cache) -> bool:
    return bool(cache.layers) and all(isinstance(layer, _SlabLayer) for layer in cache.layers)


def slab_cache(rows: int, capacity: int, n_layers: int, prefix_kv: list | None = None):
    """A cache of slab layers, empty or holding `prefix_kv` (batch 1) in every row's first columns."""
    from transformers import Cache

    slab = slab_layer_class()
    if prefix_kv is None:
        return Cache(layers=[slab(capacity, rows) for _ in range(n_layers)])
    return Cache(layers=[slab(capacity, rows, kv) for kv in prefix_kv])


def join_caches(a, a_from: int, b, b_from: int, width: int, capacity: int):
    """A new slab cache with `a`'s rows then `b`'s (see _SlabLayer.join)."""
    from transformers import Cache

    slab = slab_layer_class()
    layers = []
    for la, lb in zip(a.layers, b.layers, strict=True):
        layer = slab(capacity, la.batch + lb.batch)
        layer.join(la, a_from, lb, b_from, width)
        layers.append(layer)
    return Cache(layers=layers)
