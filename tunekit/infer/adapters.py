"""Many LoRA adapters on one base model, mixed in one batch.

The base loads once. An adapter (a PEFT folder: an exported adapter or a run's checkpoint) loads
on its first request and stays, up to `cap` of them; past that the least recently used one that
no running row needs is dropped. Rows of one forward may each name another adapter, or none.

The mixing is PEFT's own (its LoRA layers' `adapter_names` argument: rows are grouped by adapter
and each group gets its adapter's low-rank update). PEFT passes that argument from
`PeftModel.forward`/`generate` through forward pre-hooks it registers and removes on every call;
the decode loop calls the decoder directly (see decode.py), so the hooks here are registered once
per LoRA layer and read the current rows' names, which costs nothing between forwards.

Every row goes through the mixed path, even when a batch holds one adapter, so a request gets the
same arithmetic alone and beside others; it is also the arithmetic of a PeftModel with that
adapter active (base output plus the same low-rank product), which is what `tunekit chat` runs.
Adapters are applied unmerged: in bf16, chat and eval merge an adapter into the fp32 weights
before casting (models/tuned.load_answering), so there a shared base can round otherwise.
"""

from __future__ import annotations

import contextlib
import re
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

from tunekit.errors import ModelError
from tunekit.models.tuned import check_adapter, read_adapter_config

BASE = "__base__"  # PEFT's name for rows that take no adapter


class Adapters:
    """The adapters loaded on one base model. Not thread-safe on its own: the scheduler's worker
    thread is the only one that loads, evicts and runs forwards (`lock` guards the rest)."""

    def __init__(self, model, base_dir: Path, cap: int = 8):
        self.model, self.base_dir, self.cap = model, Path(base_dir), max(1, cap)
        self.loaded: OrderedDict[Path, str] = OrderedDict()  # folder -> name, least recently used first
        self._names: list[str] | None = None
        self._hooked: set[int] = set()
        self._count = 0
        self.lock = threading.Lock()

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
        if read_adapter_config(key).get("use_dora"):
            raise ModelError(f"adapter {adapter} is a DoRA adapter, which PEFT cannot mix with others in one batch; "
                             f"answer with it alone (tunekit chat / generate), or merge it (tunekit export)")
        self._count += 1
        name = f"a{self._count}_" + re.sub(r"[^A-Za-z0-9_]", "_", key.name)[:40]  # module dict keys: no dots
        self._load(key, name)
        self.loaded[key] = name
        self._evict(busy | {name})
        return name

    def _load(self, folder: Path, name: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        self.model.eval()
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

    def _hook_new_layers(self) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        for module in self.model.modules():
            if isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._hooked.add(id(module))

    def _inject(self, module, args, kwargs):
        if self._names is not None:
            kwargs["adapter_names"] = self._names
        return args, kwargs

    @contextlib.contextmanager
    def rows(self, names: list[str | None]):
        """Forwards inside run row i with adapter names[i] (None: the base alone)."""
        if not self.loaded:  # nothing but the base is loaded
            yield
            return
        self._names = [BASE if n is None else n for n in names]
        try:
            yield
        finally:
            self._names = None
