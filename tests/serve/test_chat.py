"""`tunekit chat`: streamed answers equal the eval's greedy answers, turns, commands, adapters, Ctrl-C."""

from __future__ import annotations

import io
import shutil
import sys

import pytest
from serve_builders import USER, answers_of, peft_on, user

import tunekit.serve.chat as chat_mod
from tunekit.cli import main
from tunekit.data.template import prompt_ids
from tunekit.models.loading import load_model
from tunekit.serve.chat import ChatSession, chat_loop, lines_of
from tunekit.infer.load import open_model
from tunekit.infer.sampling import Sampling
from tunekit.infer.stream import TextStream

NEW = 10
OTHER = "Where do I rotate an API key?"


class Pieces(io.StringIO):
    """An output stream that remembers each write (to see that answers stream in pieces)."""

    def __init__(self):
        super().__init__()
        self.pieces: list[str] = []

    def write(self, s: str) -> int:
        self.pieces.append(s)
        return super().write(s)


def talk(spec, lines: list[str], new: int = NEW, **kw) -> tuple[ChatSession, str]:
    session = ChatSession(open_model(str(spec)), Sampling(max_new_tokens=new), **kw)
    out = io.StringIO()
    chat_loop(session, lines_of(lines), out)
    return session, out.getvalue()


@pytest.fixture
def prompts_seen(monkeypatch) -> list[list[int]]:
    """The prompt token ids of every answer the chat writes."""
    seen = []
    real = chat_mod.stream_answer

    def spy(model, tokenizer, prompt, *a, **k):
        seen.append(prompt)
        return real(model, tokenizer, prompt, *a, **k)

    monkeypatch.setattr(chat_mod, "stream_answer", spy)
    return seen


def test_streamed_answer_equals_greedy_answers(lively_dir):
    loaded = open_model(str(lively_dir))
    session, out = ChatSession(loaded, Sampling(max_new_tokens=NEW)), Pieces()
    chat_loop(session, lines_of([USER]), out)
    want = answers_of(loaded.model, loaded.tokenizer, [user()], NEW)[0]
    assert want and session.turns == [*user(), {"role": "assistant", "content": want}]
    header, answer = out.getvalue().splitlines()[:2]
    assert str(lively_dir) in header  # names what was loaded
    assert "float32" in header and "greedy" in header and "/adapter" in header
    assert answer == want
    answer_pieces = out.pieces[1:-1]  # between the header and the final newline
    assert len(answer_pieces) > 3 and "".join(answer_pieces) == want


def test_second_prompt_holds_the_first_turn(lively_dir, prompts_seen):
    session, _ = talk(lively_dir, [USER, OTHER])
    first = session.turns[1]["content"]
    tok = session.loaded.tokenizer
    assert prompts_seen[1] == prompt_ids(tok, [*user(), {"role": "assistant", "content": first}, *user(OTHER)])
    # and the second answer is what greedy decoding gives for that whole conversation
    assert session.turns[3]["content"] == answers_of(session.loaded.model, tok, [session.turns[:3]], NEW)[0]


def test_reset_and_system(lively_dir, prompts_seen):
    session, out = talk(lively_dir, [USER, "/reset", OTHER, "/system Answer like a pirate.", "/system", USER,
                                     "/system off", "/system", USER], system="Be brief.")
    tok = session.loaded.tokenizer
    sys_msg = [{"role": "system", "content": "Be brief."}]
    assert prompts_seen[0] == prompt_ids(tok, sys_msg + user())
    assert prompts_seen[1] == prompt_ids(tok, sys_msg + user(OTHER))  # /reset kept the system prompt
    assert prompts_seen[2] == prompt_ids(tok, [{"role": "system", "content": "Answer like a pirate."}, *user()])
    assert prompts_seen[3] == prompt_ids(tok, user())  # the template's own default
    assert "system prompt: Answer like a pirate." in out and "no system prompt" in out
    assert len(session.turns) == 2


def test_adapter_off_on_path_and_name(lively_dir, adapter_a, adapter_b, prompts_seen):
    session, out = talk(adapter_a, [USER, "/reset", "/adapter off", USER, "/reset", "/adapter on", USER, "/reset",
                                    f"/adapter {adapter_b}", USER, "/reset", "/adapter list", "/adapter tuned", USER])
    answers = [session.turns[1]["content"]] if len(session.turns) == 2 else []
    tok = session.loaded.tokenizer
    base = load_model(lively_dir).eval()
    want_base = answers_of(base, tok, [user()], NEW)[0]
    want_a = answers_of(peft_on(lively_dir, adapter_a), tok, [user()], NEW)[0]
    want_b = answers_of(peft_on(lively_dir, adapter_b), tok, [user()], NEW)[0]
    assert len({want_base, want_a, want_b}) == 3  # the adapters change the answer
    lines = out.splitlines()
    got = [line for line in lines if line in (want_base, want_a, want_b)]
    assert got == [want_a, want_base, want_a, want_b, want_a]
    assert answers == [want_a]
    assert f"beta ({adapter_b}) on" in out
    assert "  tuned:" in out and "* beta:" in out  # the list marks the active one


def test_adapter_on_a_model_without_one(lively_dir, adapter_b):
    session, out = talk(lively_dir, ["/adapter off", "/adapter list", f"/adapter {adapter_b}", USER, "/reset",
                                     "/adapter off", USER])
    tok = session.loaded.tokenizer
    want_b = answers_of(peft_on(lively_dir, adapter_b), tok, [user()], NEW)[0]
    want_base = answers_of(load_model(lively_dir).eval(), tok, [user()], NEW)[0]
    assert "error: no adapter is loaded" in out and "no adapter loaded" in out
    assert [line for line in out.splitlines() if line in (want_b, want_base)] == [want_b, want_base]


def test_bad_adapters_print_the_error_and_the_chat_goes_on(lively_dir, wide_adapter, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(wide_adapter, broken)
    (broken / "adapter_model.safetensors").unlink()
    session, out = talk(lively_dir, [f"/adapter {wide_adapter}", f"/adapter {tmp_path / 'nowhere'}", f"/adapter {broken}",
                                     f"/adapter {tmp_path}", USER])
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 4
    assert "does not fit base model" in errors[0] and "wide" in errors[0]
    assert "no such folder or run" in errors[1]
    assert "missing adapter_model.safetensors" in errors[2]
    assert "no adapter_config.json" in errors[3]
    assert len(session.turns) == 2 and session.adapters == {} and session.active is None


def test_unknown_command_and_quit(lively_dir):
    session, out = talk(lively_dir, ["/frobnicate now", "/help", "/quit", USER])
    assert "unknown command /frobnicate; commands: /help /reset /system /adapter /quit" in out
    assert "/adapter off | on" in out
    assert session.turns == []  # nothing after /quit is read


def test_ctrl_c_stops_the_answer_and_the_session_goes_on(lively_dir):
    class Interrupt(io.StringIO):
        armed = True

        def write(self, s: str) -> int:
            if self.armed and s and not s.startswith(("chat with", "\n", "[")):
                self.armed = False  # the first piece of the first answer: Ctrl-C
                raise KeyboardInterrupt
            return super().write(s)

    session = ChatSession(open_model(str(lively_dir)), Sampling(max_new_tokens=NEW))
    out = Interrupt()
    chat_loop(session, lines_of([USER, OTHER]), out)
    assert "[stopped; this question and the partial answer are left out of the conversation]" in out.getvalue()
    assert [t["content"] for t in session.turns[:1]] == [OTHER]  # the interrupted exchange left no trace

    def ctrl_c_at_prompt() -> str:
        raise KeyboardInterrupt

    chat_loop(session, ctrl_c_at_prompt, io.StringIO())  # returns: the session ends cleanly


def test_old_turns_are_dropped_to_fit_the_context(lively_dir, prompts_seen):
    # The tiny model's context is 512 tokens; 440 new tokens leave 72 for the prompt.
    session, out = talk(lively_dir, [USER, OTHER, USER, "x " * 200, OTHER], new=440)
    notes = [line for line in out.splitlines() if "outgrew the model's context" in line]
    assert len(notes) == 1 and all(len(p) <= 72 for p in prompts_seen)
    assert "error: this message makes a prompt of" in out  # one message alone too long: said, and skipped
    assert session.turns[-2]["content"] == OTHER and len(session.turns) < 8


def test_stream_holds_back_half_characters(tiny_tokenizer):
    text = "Prix: 43 € — 日本語 ok"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces: list[str] = []
    stream = TextStream(tiny_tokenizer, pieces.append)
    for t in ids:
        stream.add(t)
    assert stream.close() == text and "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces) and len(pieces) > 5


def test_sampling_repeats_with_a_seed(lively_dir, monkeypatch, capsys):
    def answer(*options: str) -> str:
        monkeypatch.setattr(sys, "stdin", io.StringIO(f"{USER}\n"))
        assert main(["chat", str(lively_dir), *options, "--max-new-tokens", str(NEW)]) == 0
        out = capsys.readouterr().out
        assert ("sampling (temperature 1.5, top-p 0.9)" in out) == bool(options)
        return out.split(f"> {USER}\n")[1].splitlines()[0]

    sampled = [answer("--temperature", "1.5", "--top-p", "0.9", "--seed", seed) for seed in ("7", "7", "8")]
    assert sampled[0] == sampled[1]  # the same seed, the same answer
    # ...and sampling does sample: another seed, and greedy decoding, answer otherwise
    assert len({sampled[0], sampled[2], answer()}) == 3


def test_cli_chat_on_an_adapter_and_a_missing_adapter_file(lively_dir, adapter_a, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{USER}\n/adapter list\n"))
    assert main(["chat", str(adapter_a), "--max-new-tokens", str(NEW), "--stats"]) == 0
    out = capsys.readouterr().out
    want = answers_of(peft_on(lively_dir, adapter_a), open_model(str(lively_dir)).tokenizer, [user()], NEW)[0]
    assert f"> {USER}\n{want}\n[" in out and "tokens/s]" in out and "* tuned:" in out
    assert f"chat with alpha (base {lively_dir}, adapter {adapter_a}; float32 weights, computing in fp32 on cpu" in out

    broken = tmp_path / "broken"
    shutil.copytree(adapter_a, broken)
    (broken / "adapter_model.safetensors").unlink()
    assert main(["chat", str(broken)]) == 2
    assert "missing adapter_model.safetensors" in capsys.readouterr().err
    assert main(["chat", str(lively_dir), "--max-new-tokens", "0"]) == 2
