"""Requests from many threads answered together: one worker thread per base model runs the decode
loop, and requests join its running batch between two steps (continuous batching).

Why one worker thread and not a batch per request thread: a CPU (or one GPU) runs one forward at
a time well; eight threads each running batch-1 forwards would share the cores and pay for the
weights eight times per token. A forward over eight rows reads the weights once, so a step for
eight answers costs little more than a step for one.

The worker's loop: take what was submitted (when idle, wait `window_s` after the first arrival so
requests sent together are prefilled together); prefill the newcomers as a batch of their own
(the first token of each), join them to the running batch, then step the running batch once and
hand every row's new tokens to its request's queue. A request cancelled by its reader (a client
gone, a stop string written) leaves the batch at the next step. Models whose KV cache cannot be
joined (cache.py) are answered a batch at a time: newcomers wait for the running batch to end.

Adapters load in the worker (a forward must not run while PEFT rewires the layers), so the first
request for an adapter holds the running batch for its loading time. Rows of an adapter that cannot
be mixed with others (DoRA) run in a batch of their own, stepped in turn with the mixed one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunekit.infer.adapters import Adapters
from tunekit.infer.cache import SharedPrefix, plain_layer_count
from tunekit.infer.decode import Batch, Row


@dataclass
class Ask:
    """One answer wanted: `prompt` token ids, up to `max_new` tokens, ending at a `stop` token."""

    prompt: list[int]
    max_new: int
    stop: set[int] | frozenset[int]
    adapter: Path | None = None  # a PEFT adapter folder on the engine's base; None: the base alone
    sample: Callable[[torch.Tensor], int] | None = None  # None: greedy


@dataclass
class Event:
    """What a request's reader gets: new tokens of answer `index`, its finish reason once it has
    ended ("stop", "length", "cancelled"), or the error that ended every answer of the request."""

    index: int
    tokens: list[int] = field(default_factory=list)
    finish: str | None = None
    error: BaseException | None = None


class Request:
    """The answers to some Asks (one per choice), as events; iterate it from the asking thread."""

    def __init__(self, asks: list[Ask]):
        self.asks, self.events = asks, queue.Queue()
        self.rows: list[Row] = []
        self.cancelled = False
        self._open = len(asks)

    def __iter__(self) -> Iterator[Event]:
        """Events until every answer has ended; an error is raised after the events before it."""
        while self._open:
            event = self.events.get()
            if event.error is not None:
                self._open = 0
                raise event.error
            if event.finish is not None:
                self._open -= 1
            yield event

    def cancel(self) -> None:
        """Stop writing every answer of this request (from any thread)."""
        self.cancelled = True
        for row in self.rows:
            row.cancel()


class Engine:
    """One base model answering concurrent requests. `submit` from any thread; `close` at the end.

    `max_batch`: rows one step runs at most (1: one request at a time, the baseline of
    bench/serve_load.py); `window_s`: how long an idle engine waits after a request for others."""

    def __init__(self, model, pad_id: int, base_dir: Path, *, max_batch: int = 16, window_s: float = 0.01,
                 adapter_cap: int = 8, name: str = "engine"):
        self.adapters = Adapters(model, base_dir, adapter_cap)
        self._joinable = plain_layer_count(model) > 0  # see cache.py: else a batch at a time
        self.pad_id, self.max_batch, self.window_s = pad_id, max(1, max_batch), window_s
        self._inbox: queue.Queue[Request | None] = queue.Queue()
        self._closed = False
        self._owner: dict[int, tuple[Request, int]] = {}  # id(row) -> (its request, answer index), until it ended
        self._sent: dict[int, int] = {}  # id(row) -> tokens handed out
        self.steps = 0  # decode steps run (figures for benchmarks and tests)
        self.widest = 0  # the most rows one step has run
        self._worker = threading.Thread(target=self._run, name=f"tunekit-{name}", daemon=True)
        self._worker.start()

    @property
    def model(self):
        return self.adapters.model

    def submit(self, asks: list[Ask]) -> Request:
        """Queue `asks` (the answers of one request, batched together); read them from the Request."""
        if self._closed:
            raise RuntimeError("the engine is closed")
        if not 0 < len(asks) <= self.max_batch:
            raise ValueError(f"a request takes 1 to {self.max_batch} answers (this engine's batch), not {len(asks)}")
        request = Request(asks)
        self._inbox.put(request)
        return request

    def close(self) -> None:
        """Stop the worker; requests not yet answered end with an error."""
        self._closed = True
        self._inbox.put(None)
        self._worker.join()

    # -- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        # Lanes: None is the batch of the base and every adapter that mixes with others; an adapter
        # that cannot mix (DoRA, see adapters.py) has a batch of its own. Each step runs every lane once.
        lanes: dict[str | None, Batch] = {}
        waiting: list[Request] = []  # taken from the inbox, not yet in a batch
        while self._collect(waiting, block=not any(b.rows for b in lanes.values()) and not waiting):
            live = sum(len(b.rows) for b in lanes.values())
            if waiting and live < self.max_batch and (not live or self._joinable):
                self._admit(lanes, waiting, self.max_batch - live)
            for key, batch in list(lanes.items()):
                try:
                    stepped = batch.step()
                except Exception as e:  # noqa: BLE001 (a failed forward ends its rows' requests, not the engine)
                    self._fail({id(self._owner[id(r)][0]): self._owner[id(r)][0] for r in batch.rows}.values(), e)
                    del lanes[key]
                    continue
                if stepped:
                    self.steps += 1
                    self.widest = max(self.widest, len(batch.rows))
                self._emit(batch.rows + batch.take_left())
                if not batch.rows:
                    del lanes[key]
        for request in [*waiting, *(owner for owner, _ in self._owner.values())]:
            self._fail([request], RuntimeError("the engine closed"))

    def _collect(self, waiting: list[Request], block: bool) -> bool:
        """Move submitted requests to `waiting`; False when the engine is closing."""
        try:
            if block:
                first = self._inbox.get()
                if first is None:
                    return False
                waiting.append(first)
                time.sleep(self.window_s)  # let the requests sent with it arrive
            while True:
                request = self._inbox.get_nowait()
                if request is None:
                    return False
                waiting.append(request)
        except queue.Empty:
            return True

    def _admit(self, lanes: dict[str | None, Batch], waiting: list[Request], free: int) -> None:
        """Prefill the waiting requests that fit (all the answers of each) and join them to their lanes."""
        busy = {r.adapter for b in lanes.values() for r in b.rows}
        rows: list[Row] = []
        while waiting and len(waiting[0].asks) <= free - len(rows):
            request = waiting.pop(0)
            try:
                names = [self.adapters.name(a.adapter, busy | {r.adapter for r in rows}) for a in request.asks]
            except Exception as e:  # noqa: BLE001 (a broken adapter fails its own request)
                self._fail([request], e)
                continue
            request.rows = [Row(a.prompt, a.max_new, a.stop, n, a.sample) for a, n in zip(request.asks, names, strict=True)]
            for i, row in enumerate(request.rows):
                self._owner[id(row)], self._sent[id(row)] = (request, i), 0
                if request.cancelled:  # cancelled while waiting
                    row.cancel()
            rows += request.rows
        for batch in lanes.values():
            batch.use(self.model)  # PEFT wraps the base when the first adapter loads
        groups: dict[str | None, list[Row]] = {}
        for row in rows:
            groups.setdefault(row.adapter if row.adapter in self.adapters.solo else None, []).append(row)
        for key, group in groups.items():
            # A lone prompt prefills in one forward, as `tunekit chat` does; several share their common prefix.
            shared = SharedPrefix([]) if len(group) == 1 else None
            try:
                new = Batch(self.model, group, self.pad_id, shared, self.adapters)
            except Exception as e:  # noqa: BLE001
                self._fail({id(self._owner[id(r)][0]): self._owner[id(r)][0] for r in group}.values(), e)
                continue
            self._emit(group)
            if key in lanes and lanes[key].rows:
                lanes[key].extend(new)
                self._emit(lanes[key].take_left())
            else:
                lanes[key] = new

    def _emit(self, rows: list[Row]) -> None:
        """Hand each row's new tokens (and its finish, once) to its request."""
        for row in rows:
            key = id(row)
            if key not in self._owner:
                continue
            finish = row.finish  # read once: a reader may cancel the row meanwhile
            request, index = self._owner[key]
            new = row.tokens[self._sent[key]:]
            if new or finish is not None:
                self._sent[key] += len(new)
                request.events.put(Event(index, new, finish))
            if finish is not None:
                del self._owner[key], self._sent[key]

    def _fail(self, requests, error: BaseException) -> None:
        for request in list(requests):
            for row in request.rows:
                row.cancel()
                self._owner.pop(id(row), None)
                self._sent.pop(id(row), None)
            request.events.put(Event(0, error=error))
