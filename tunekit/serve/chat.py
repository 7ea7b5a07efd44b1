"""`tunekit chat`: a multi-turn conversation with a model, a run's tuned model or an adapter.

The terminal side only (the REPL, its commands, fitting turns into the context); the answers come
from the one inference engine, tunekit/infer (stream.stream_answer).

The loop is a plain function over a line source and an output stream, so a terminal, a pipe
and the tests drive the same code; the CLI only picks the source.

Ctrl-C during an answer stops it and leaves that question and its partial answer out of the
conversation: a half answer in the context would steer the next ones with text the model never
finished, and keeping the question alone would put two user turns in a row, which chat
templates reject. Ctrl-C (or Ctrl-D, or the end of piped input) at the prompt ends the session.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import torch

from tunekit.data.template import prompt_ids
from tunekit.errors import CheckpointError, ConfigError, ModelError, TunekitError
from tunekit.infer.greedy import stop_ids
from tunekit.infer.load import Loaded, context_window, describe
from tunekit.infer.sampling import Sampling
from tunekit.infer.stream import stream_answer

COMMANDS = "/help /reset /system /adapter /quit"
HELP = """\
/reset                  forget the conversation (the system prompt stays)
/system TEXT            set the system prompt and start over; /system shows it, /system off removes it
/adapter list           loaded adapters and which one answers
/adapter PATH|RUN       load an adapter folder (or a run's tuned adapter) onto the same base and use it
/adapter NAME           use a loaded adapter again
/adapter off | on       the base model alone | back to the last adapter
/quit                   end (also Ctrl-D; Ctrl-C stops an answer, or ends at the prompt)"""


def context_limit(model, max_new_tokens: int) -> int | None:
    """Prompt tokens that leave room for a full answer within the model's context; None: no known limit."""
    window = context_window(model)
    if not window:
        return None
    if window - max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of "
                          f"{window} tokens; lower it")
    return window - max_new_tokens


def conversation(system: str | None, turns: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + turns


def fit_context(tokenizer, system: str | None, turns: list[dict], limit: int | None) -> tuple[list[int], int]:
    """(prompt ids, how many of the oldest turns were left out to fit `limit`). Turns go in
    user+assistant pairs, oldest first; the system prompt and the last question always stay."""
    dropped = 0
    while True:
        ids = prompt_ids(tokenizer, conversation(system, turns[dropped:]))
        if limit is None or len(ids) <= limit:
            return ids, dropped
        if len(turns) - dropped <= 1:
            raise ModelError(f"this message makes a prompt of {len(ids)} tokens (with the system prompt and chat template), "
                             f"over the {limit} the model's context leaves beside --max-new-tokens; shorten it, "
                             f"or lower --max-new-tokens")
        dropped += 2


@dataclass
class ChatSession:
    loaded: Loaded
    sampling: Sampling = field(default_factory=Sampling)
    system: str | None = None
    runs_dir: str | Path = "runs"
    stats: bool = False  # a line after each answer: tokens, first-token latency, tokens/s
    turns: list[dict] = field(default_factory=list)  # user/assistant messages, alternating
    adapters: dict[str, Path] = field(default_factory=dict)  # loaded adapter name -> folder
    active: str | None = None  # the adapter answering; None: the base model alone
    last: str | None = None  # what `/adapter on` goes back to
    trimmed: bool = False  # the note about dropped turns was shown

    def __post_init__(self) -> None:
        t = self.loaded.target
        if t.adapter is not None:
            self.adapters["tuned"] = t.adapter  # load_target names it so
            self.active = self.last = "tuned"
        self.stop = stop_ids(self.loaded.model, self.loaded.tokenizer)
        self.limit = context_limit(self.loaded.model, self.sampling.max_new_tokens)

    def header(self) -> str:
        return f"chat with {describe(self.loaded)}, {self.sampling.describe()}; commands: {COMMANDS}"

    # -- answering ---------------------------------------------------------------------------

    @property
    def _merged(self) -> bool:
        """In bf16/fp16 the answering model has its adapter merged (tuned.load_target): switching
        adapters reloads the base, so each answer is the one the eval stage would give."""
        return self.loaded.precision.dtype is not None

    def _reload(self, adapter: Path | None) -> None:
        """Answer with `adapter` merged (None: the base alone). One model in memory at a time: when
        the new one cannot be loaded, the one that answered before is loaded again and the error said."""
        from tunekit.models.tuned import load_answering

        def load(which: Path | None):
            return load_answering(self.loaded.target.model, which, self.loaded.dtype, self.loaded.precision)

        before = self.adapters.get(self.active) if self.active else None
        self.loaded.model = None
        try:
            self.loaded.model = load(adapter)
        except Exception as e:  # noqa: BLE001 (a broken file, PEFT's ValueError, out of memory: the chat goes on)
            self.loaded.model = load(before)
            raise ModelError(f"cannot load {adapter or 'the base model'} ({e}); "
                             f"{before or 'the base model'} answers as before") from None

    def _adapter_state(self):
        """The base model alone while adapters are loaded but switched off."""
        if self.active is None and self.adapters and not self._merged:
            return self.loaded.model.disable_adapter()
        return nullcontext()

    def ask(self, text: str, out: TextIO) -> None:
        turns = [*self.turns, {"role": "user", "content": text}]
        try:
            prompt, dropped = fit_context(self.loaded.tokenizer, self.system, turns, self.limit)
        except TunekitError as e:
            _say(out, f"error: {e}")
            return
        if dropped:
            if not self.trimmed:
                _say(out, f"[the conversation outgrew the model's context ({self.limit} prompt tokens beside "
                          f"--max-new-tokens): the oldest turns are dropped from now on; the system prompt stays]")
                self.trimmed = True
            del turns[:dropped]

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        try:
            with self._adapter_state():
                answer = stream_answer(self.loaded.model, self.loaded.tokenizer, prompt, self.sampling, self.stop, show)
        except KeyboardInterrupt:
            _say(out, "\n[stopped; this question and the partial answer are left out of the conversation]")
            return
        out.write("\n")
        if self.stats:
            _say(out, f"[{answer.tokens} tokens, prompt {answer.prompt_tokens}, first token {answer.first_token_s:.2f} s, "
                      f"{answer.decode_rate:.1f} tokens/s]")
        self.turns = [*turns, {"role": "assistant", "content": answer.text}]

    # -- commands ----------------------------------------------------------------------------

    def command(self, line: str, out: TextIO) -> bool:
        """Run one /command; False when the session should end."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            _say(out, HELP)
        elif name == "/reset":
            self.turns = []
            _say(out, "[conversation cleared" + ("; the system prompt stays]" if self.system else "]"))
        elif name == "/system":
            self._system(arg, out)
        elif name == "/adapter":
            try:
                self._adapter(arg, out)
            except TunekitError as e:
                _say(out, f"error: {e}")
        else:
            _say(out, f"unknown command {name}; commands: {COMMANDS} (/help explains them)")
        return True

    def _system(self, arg: str, out: TextIO) -> None:
        if not arg:
            _say(out, f"system prompt: {self.system}" if self.system else "no system prompt (the chat template's default applies)")
            return
        self.system = None if arg == "off" else arg
        self.turns = []
        _say(out, "[system prompt " + ("removed" if self.system is None else "set") + "; conversation cleared]")

    def _adapter(self, arg: str, out: TextIO) -> None:
        if arg in ("", "list"):
            _say(out, self._list())
        elif arg == "off":
            if not self.adapters:
                raise ModelError("no adapter is loaded, so the base model already answers; load one with /adapter PATH")
            if self._merged and self.active is not None:
                self._reload(None)
            self.active = None
            _say(out, "[adapter off: the base model answers]")
        elif arg == "on":
            if self.last is None:
                raise ModelError("no adapter is loaded; load one with /adapter PATH")
            self._use(self.last)
            _say(out, f"[adapter {self.last} on]")
        elif arg in self.adapters:
            self._use(arg)
            _say(out, f"[adapter {arg} on]")
        else:
            name = self._load(arg)
            _say(out, f"[adapter {name} ({self.adapters[name]}) on]")

    def _list(self) -> str:
        if not self.adapters:
            return "no adapter loaded; the base model answers (load one with /adapter PATH)"
        rows = [f"{'*' if n == self.active else ' '} {n}: {p}" for n, p in self.adapters.items()]
        return "\n".join(rows + ([] if self.active else ["(adapters off: the base model answers)"]))

    def _use(self, name: str) -> None:
        if self._merged:
            if name != self.active:
                self._reload(self.adapters[name])
        else:
            self.loaded.model.set_adapter(name)
        self.active = self.last = name

    def _load(self, spec: str) -> str:
        """Load the adapter `spec` names (a folder, or a run whose tuned model is an adapter) onto the base."""
        from tunekit.models.tuned import attach_adapter, check_adapter, is_run, resolve_target

        path = Path(spec).expanduser()
        run = next((r for r in (path, Path(self.runs_dir) / spec) if r.is_dir() and is_run(r)), None)
        base = self.loaded.target.model  # a full fine-tune's weights are the base its adapters go on
        if run is None and not path.is_dir():
            loaded = ", ".join(self.adapters) or "none"
            raise ModelError(f"/adapter {spec}: no loaded adapter has that name (loaded: {loaded}) and there is no such "
                             f"folder or run; give an adapter folder (adapter_config.json + adapter_model.safetensors)")
        if run is None and not (path / "adapter_config.json").is_file():
            raise CheckpointError(f"{path} is not an adapter folder: it has no adapter_config.json (an adapter is PEFT's "
                                  f"folder: adapter_config.json + adapter_model.safetensors)")
        target = resolve_target(str(run or path), base=str(base))
        if target.adapter is None:
            raise ModelError(f"run {run} was a full fine-tune, so it has no adapter to put on this base; "
                             f"chat with it directly: tunekit chat {run}")
        same = next((n for n, p in self.adapters.items() if p.resolve() == target.adapter.resolve()), None)
        if same is not None:
            self._use(same)
            return same
        name = self._name(run.name if run else path.name)
        if self._merged:
            check_adapter(target.adapter, base)
            self._reload(target.adapter)
        else:
            self.loaded.model = attach_adapter(self.loaded.model, target.adapter, base, name)
        self.adapters[name] = target.adapter
        self.active = self.last = name
        return name

    def _name(self, stem: str) -> str:
        # PEFT keeps adapters in module dicts, whose keys cannot hold dots.
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "adapter"
        name, n = stem, 1
        while name in self.adapters or name in ("off", "on", "list"):
            n += 1
            name = f"{stem}-{n}"
        return name


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def lines_of(source: Iterable[str]) -> Callable[[], str]:
    """A read function over lines (piped stdin, a list in tests); EOFError at the end."""
    it: Iterator[str] = iter(source)

    def read() -> str:
        try:
            return next(it).rstrip("\n")
        except StopIteration:
            raise EOFError from None

    return read


def terminal_read() -> Callable[[], str]:
    """input() with a "> " prompt and line editing; Ctrl-D leaves the cursor on a fresh line."""
    try:
        import readline  # noqa: F401  (importing it gives input() editing and history)
    except ImportError:
        pass

    def read() -> str:
        try:
            return input("> ")
        except EOFError:
            print()
            raise

    return read


def chat_loop(session: ChatSession, read: Callable[[], str], out: TextIO, echo: bool = False) -> None:
    """Read lines and answer them until /quit or the end of input. `read` raises EOFError at the end
    (input() does on Ctrl-D); `echo` writes each line after a "> " so a piped transcript reads like a chat."""
    _say(out, session.header())
    while True:
        try:
            line = read()
        except EOFError:
            break
        except KeyboardInterrupt:
            out.write("\n")
            break
        if echo:
            _say(out, f"> {line}")
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line, out):
                break
        else:
            session.ask(line, out)


def seed_sampling(seed: int | None) -> None:
    """--seed makes sampled answers repeat; without it each session samples afresh (torch's
    default generator starts from the same fixed seed in every process)."""
    if seed is None:
        torch.seed()
    else:
        torch.manual_seed(seed)
