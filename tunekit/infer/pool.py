"""Models a server answers with: one Engine per base model (its weights loaded once), shared by
every adapter on that base; each name a client calls resolves to (engine, adapter, tokenizer).

A run's tuned model answers with the tokenizer and chat template the run trained with, as
`tunekit chat RUN` does, and in the dtype and precision its eval used (infer/load.py). Engines
are keyed by (weights folder, dtype, precision): a full fine-tune's checkpoint is a base of its own.

In bf16 (a GPU, or a CPU with AMX under precision auto) chat and eval merge an adapter into the
fp32 weights before casting; an engine shares its base between adapters, so it applies them
unmerged and an answer can round otherwise there. In fp32 they are the same arithmetic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from tunekit.infer.greedy import stop_ids
from tunekit.infer.load import answer_dtype, answer_precision, context_window
from tunekit.infer.scheduler import Engine
from tunekit.infer.stream import pad_id
from tunekit.models.tuned import Target, load_answering


@dataclass
class Served:
    """What one model name answers with."""

    engine: Engine
    adapter: Path | None  # on the engine's base; None: the base (or full fine-tune) alone
    tokenizer: object
    stop: set[int]
    label: str

    @property
    def context(self) -> int | None:
        return context_window(self.engine.model)


class EnginePool:
    """Engines by base model, made on first use; `get` is safe from many threads."""

    def __init__(self, max_batch: int = 16, adapter_cap: int = 8, window_s: float = 0.01, precision: str | None = None):
        """`precision` ("auto", "fp32", ...) for every model; None: each model's own (`answer_precision`).
        In bf16 a batch's shapes change the rounding, and a greedy answer can differ from the one
        the same request gets alone; fp32 keeps them equal (bench/results/serve_load*.json)."""
        self.max_batch, self.adapter_cap, self.window_s = max_batch, adapter_cap, window_s
        self.precision = precision
        self._engines: dict[tuple, Engine] = {}
        self._tokenizers: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def get(self, target: Target, label: str | None = None) -> Served:
        """The engine and tokenizer for `target` (models.tuned.resolve_target, or the server's model
        names), loading the base and the tokenizer on first use; the adapter loads on first request."""
        from tunekit.models.loading import load_tokenizer

        dtype, precision = answer_dtype(target), answer_precision(target, self.precision)
        key = (target.model.resolve(), dtype, precision.name)
        with self._lock:
            tok_key = (Path(target.tokenizer).resolve(), target.chat_template)
            if tok_key not in self._tokenizers:
                self._tokenizers[tok_key] = load_tokenizer(target.tokenizer, target.chat_template)
            tokenizer = self._tokenizers[tok_key]
            if key not in self._engines:
                model = load_answering(target.model, None, dtype, precision)
                self._engines[key] = Engine(model, pad_id(tokenizer), target.model, max_batch=self.max_batch,
                                            window_s=self.window_s, adapter_cap=self.adapter_cap,
                                            name=target.model.name)
            engine = self._engines[key]
        return Served(engine, target.adapter, tokenizer, stop_ids(engine.model, tokenizer), label or target.label)

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
