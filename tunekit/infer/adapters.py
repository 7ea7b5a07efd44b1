"""Many LoRA adapters on one base model, mixed in one batch.

The base loads once. An adapter (a PEFT folder: an exported adapter or a run's checkpoint) loads
on its first request and stays, up to `cap` of them; past that the least recently used one that
no running row needs is dropped. Rows of one forward may each name another adapter, or none.

PEFT loads the adapters (every format detail, modules_to_save included) and two ways mix them:
- "peft": PEFT's mixed-adapter batches (its LoRA layers' `adapter_names` argument): per layer,
  rows are grouped by adapter and each group gets its adapter's low-rank update. PEFT passes
  the argument from `PeftModel.forward`/`generate` through hooks it registers on every call; the
  decode loop calls the decoder directly (decode.py), so here hooks are registered once per
  layer and read the current rows' names.
- "own" (the default): each LoRA linear layer's loaded adapters side by side, A stacked to
  (sum of ranks, in) and B to (out, sum of ranks): two matmuls for all rows whatever their
  adapters, a 0/1 mask keeping each row's own adapter's columns, and the row's scaling after B,
  in PEFT's order of operations (base + (B(Ax)) * scaling). PEFT's way costs a handful of small
  ops per adapter per layer, which at SmolLM2's 210 LoRA layers is most of a decode step on a CPU
  (bench/results/serve_load.md). Layers whose adapters are not plain LoRA fall back to PEFT's way.

PEFT mixes no DoRA adapter (its magnitude vectors rescale the whole weight); one is loaded as the
others, but its rows run in a batch of their own (infer/scheduler.py) with it active in PEFT.

Either way a row's arithmetic is its own (masked columns add exact zeros) and is the arithmetic
of a PeftModel with that adapter active, which is what `tunekit chat` runs, up to the summation
order of a longer matmul (tests/infer compare tokens). Adapters are applied unmerged: in bf16,
chat and eval merge an adapter into the fp32 weights before casting (models/tuned.load_answering),
so there a shared base can round otherwise.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from tunekit.models.tuned import check_adapter, read_adapter_config

BASE = "__base__"  # PEFT's name for rows that take no adapter
MIXING = ("own", "peft")


class _Stack:
    """One LoRA linear layer's plain-LoRA adapters side by side (see the module docstring)."""

    def __init__(self, layer, names: list[str]):
        self.names = names
        self.a = torch.cat([layer.lora_A[n].weight for n in names])  # (sum of ranks, in)
        self.b = torch.cat([layer.lora_B[n].weight for n in names], dim=1)  # (out, sum of ranks)
        ranks = [layer.lora_A[n].weight.shape[0] for n in names]
        starts = [sum(ranks[:i]) for i in range(len(ranks))]
        self.cols = {n: (s, s + r) for n, s, r in zip(names, starts, ranks, strict=True)}
        self.key = tuple((n, self.cols[n], float(layer.scaling[n])) for n in names)


def _plain(layer, name: str) -> bool:
    """A vanilla LoRA update of this Linear (no DoRA or other variant, no bias on B): stackable."""
    return name not in getattr(layer, "lora_variant", {}) and layer.lora_B[name].bias is None


class Adapters:
    """The adapters loaded on one base model. Not thread-safe: the scheduler's worker thread is the
    only one that loads, evicts and runs forwards."""

    def __init__(self, model, base_dir: Path, cap: int = 8, mixing: str = "own"):
        if mixing not in MIXING:
            raise ValueError(f"mixing {mixing!r} is not one of {MIXING}")
        self.model, self.base_dir, self.cap, self.mixing = model, Path(base_dir), max(1, cap), mixing
        self.loaded: OrderedDict[Path, str] = OrderedDict()  # folder -> name, least recently used first
        self._names: list[str] | None = None  # the rows of the forward running now
        self._masks: dict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = {}  # per stack layout, this forward
        self._stacks: dict[int, _Stack] = {}  # id(LoRA Linear) -> its stack ("own" mixing)
        self._hooked: set[int] = set()
        self._count = 0
        self.solo: set[str] = set()  # adapters that cannot be mixed (DoRA): their rows run alone (`rows`)
        self._active: str | None = None

    def name(self, adapter: Path | None, busy: set[str] = frozenset()) -> str | None:
        """The loaded name of `adapter` (None: the base), loading it now if needed; `busy`: names
        that running rows use, which are not evicted."""
        if adapter is None:
            return None
        key = Path(adapter).resolve()
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        check_adapter(key, self.base_dir)
        self._count += 1
        name = f"a{self._count}_" + re.sub(r"[^A-Za-z0-9_]", "_", key.name)[:40]  # module dict keys: no dots
        self._load(key, name)
        self.loaded[key] = name
        if read_adapter_config(key).get("use_dora") or any(not _plain(m, name) for m in self._lora_linears()
                                                            if name in m.lora_A):
            self.solo.add(name)
        self._evict(busy | {name})
        self._restack()
        return name

    def _load(self, folder: Path, name: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        self.model.eval()
        self._active = None  # PEFT may have made the new one active
        self._hook_new_layers()

    def _evict(self, busy: set[str]) -> None:
        for key, name in list(self.loaded.items()):
            if len(self.loaded) <= self.cap:
                break
            if name not in busy:
                with warnings.catch_warnings():  # "adapter X was active": no adapter is active here, rows name theirs
                    warnings.simplefilter("ignore", UserWarning)
                    self.model.delete_adapter(name)
                del self.loaded[key]
                self.solo.discard(name)
                self._active = None if self._active == name else self._active

    def _lora_linears(self):
        from peft.tuners.lora import Linear

        return [m for m in self.model.modules() if isinstance(m, Linear)]

    def _restack(self) -> None:
        self._stacks = {}
        if self.mixing != "own":
            return
        loaded = set(self.loaded.values()) - self.solo
        for layer in self._lora_linears():
            names = [n for n in layer.lora_A if n in loaded]
            if names and all(_plain(layer, n) for n in names):
                self._stacks[id(layer)] = _Stack(layer, names)

    def _hook_new_layers(self) -> None:
        from peft.tuners.lora import LoraLayer, Linear
        from peft.utils.other import AuxiliaryTrainingWrapper

        for module in self.model.modules():
            if isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._inject, with_kwargs=True)
                if isinstance(module, Linear):
                    module.register_forward_hook(self._add, with_kwargs=True)
                self._hooked.add(id(module))

    def _inject(self, module, args, kwargs):
        """Before a LoRA layer: PEFT mixes the rows, or (a stacked layer) runs only the base, `_add` the rest."""
        if self._names is not None:
            kwargs["adapter_names"] = [BASE] * len(self._names) if id(module) in self._stacks else self._names
        return args, kwargs

    def _add(self, module, args, kwargs, output):
        stack = self._stacks.get(id(module)) if self._names is not None else None
        if stack is None:
            return output
        mask, scale = self._mask(stack)
        if mask is None:  # no row uses this layer's adapters
            return output
        x = args[0] if args else kwargs["x"]
        h = torch.nn.functional.linear(x.to(stack.a.dtype), stack.a) * mask
        return output + (torch.nn.functional.linear(h, stack.b) * scale).to(output.dtype)

    def _mask(self, stack: _Stack) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(0/1 of each row's own columns (rows, 1, ranks), its scaling (rows, 1, 1)); computed once per
        forward for each layout of stacked adapters (most layers share one)."""
        if stack.key not in self._masks:
            mask = torch.zeros((len(self._names), 1, stack.a.shape[0]), dtype=stack.a.dtype)
            scale = torch.zeros((len(self._names), 1, 1), dtype=stack.a.dtype)
            scalings = {n: s for n, _, s in stack.key}
            for row, name in enumerate(self._names):
                if name in stack.cols:
                    start, end = stack.cols[name]
                    mask[row, 0, start:end] = 1
                    scale[row] = scalings[name]
            used = bool(scale.any())
            self._masks[stack.key] = (mask.to(stack.a.device), scale.to(stack.a.device)) if used else (None, None)
        return self._masks[stack.key]

    @contextlib.contextmanager
    def rows(self, names: list[str | None]):
        """Forwards inside run row i with adapter names[i] (None: the base alone)."""
        if not self.loaded:  # nothing but the base is loaded
            yield
            return
        if names[0] in self.solo:  # PEFT's own path with that adapter active (the scheduler never mixes it)
            assert set(names) == {names[0]}, "an adapter that cannot mix shares a batch"
            if self._active != names[0]:
                self.model.set_adapter(names[0])
                self._active = names[0]
            yield
            return
        self._names, self._masks = [BASE if n is None else n for n in names], {}
        try:
            yield
        finally:
            self._names, self._masks = None, {}
