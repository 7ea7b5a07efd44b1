"""`tunekit generate`: every prompt format, answers in input order equal to greedy_answers, bad lines named."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import write_jsonl
from serve_builders import answers_of, peft_on

from tunekit.cli import main
from tunekit.errors import DataError
from tunekit.models.loading import load_model, load_tokenizer
from tunekit.serve.batch import default_output, generate_file, read_prompts

NEW = 8
SYS = {"role": "system", "content": "Answer in one line."}
ROWS = [
    {"id": 1, "messages": [{"role": "user", "content": "What does error RW-4031 mean?"},
                           {"role": "assistant", "content": "The webhook signature did not match."}]},
    {"prompt": "Where do I rotate an API key?"},
    {"instruction": "How much does the Crest plan cost per seat?", "input": "Billed monthly.", "output": "$43."},
    {"messages": [SYS, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "What is the refund window?"}]},
    {"instruction": "Say thanks.", "system": "Be kind."},
]
# What the model is asked for each row (the reference answer left out), in file order.
ASKED = [
    [{"role": "user", "content": "What does error RW-4031 mean?"}],
    [{"role": "user", "content": "Where do I rotate an API key?"}],
    [{"role": "user", "content": "How much does the Crest plan cost per seat?\n\nBilled monthly."}],
    ROWS[3]["messages"],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Say thanks."}],
]


@pytest.fixture
def prompts_file(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", ROWS)
    path.write_text(path.read_text().replace("\n", "\n\n", 1))  # a blank line is skipped
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_mixed_formats_answered_in_input_order(lively_dir, prompts_file, tmp_path):
    prompts = read_prompts(prompts_file)
    assert [p.messages for p in prompts] == ASKED and [p.line for p in prompts] == [1, 3, 4, 5, 6]
    model, tok = load_model(lively_dir).eval(), load_tokenizer(lively_dir)
    written = generate_file(model, tok, prompts, tmp_path / "out.jsonl", "lively", NEW, batch_size=2)
    rows = read_jsonl(tmp_path / "out.jsonl")
    want = answers_of(model, tok, ASKED, NEW)
    assert len(set(want)) == len(want)  # distinct answers, so the order is checked
    assert [r["answer"] for r in rows] == want and {r["model"] for r in rows} == {"lively"}
    assert rows[0]["id"] == 1 and rows[0]["messages"] == ASKED[0] and rows[0]["reference"] == "The webhook signature did not match."
    assert rows[2]["reference"] == "$43." and rows[2]["instruction"] == ROWS[2]["instruction"]
    assert "reference" not in rows[1] and "reference" not in rows[3] and rows[3]["messages"] == ROWS[3]["messages"]
    assert written.answers == 5 and written.tokens > 0


def test_system_is_added_where_there_is_none(prompts_file):
    prompts = read_prompts(prompts_file, system="Be brief.")
    firsts = [p.messages[0] for p in prompts]
    added = {"role": "system", "content": "Be brief."}
    assert firsts == [added, added, added, SYS, {"role": "system", "content": "Be kind."}]


@pytest.mark.parametrize("line, what", [
    ('{"messages": [{"role": "user", "content": "Hi"}', "not valid JSON"),
    ('["Hi"]', "a JSON list, not an object"),
    ('{"question": "Hi"}', "no 'messages', 'prompt' or 'instruction' field (keys: question)"),
    ('{"prompt": ""}', "'prompt' must be a non-empty string"),
    ('{"prompt": 3}', "'prompt' must be a non-empty string"),
    ('{"instruction": "Hi", "input": 4}', "'input' must be a string"),
    ('{"messages": []}', "'messages' must be a non-empty list"),
    ('{"messages": ["Hi"]}', "messages[0] must be an object"),
    ('{"messages": [{"role": "assistant", "content": "Hi"}]}', "holds only an assistant turn"),
    ('{"messages": [{"role": "bot", "content": "Hi"}]}', "messages[0].role is 'bot'"),
    ('{"messages": [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}]}', "must alternate"),
])
def test_a_bad_line_is_named(tmp_path, line, what):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_prompts(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, line 3: ") and what in msg and 'expected one JSON object a line: {"messages"' in msg


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no prompts file at"):
        read_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "ok"}\n\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl, line 3: not UTF-8 text \(byte 16 of the line\)"):
        read_prompts(tmp_path / "latin1.jsonl")


def test_cli_generate_on_an_adapter(lively_dir, adapter_a, prompts_file, capsys):
    assert main(["generate", str(adapter_a), "--input", str(prompts_file), "--max-new-tokens", str(NEW),
                 "--batch-size", "3"]) == 0
    out_path = default_output(prompts_file)
    assert out_path.name == "prompts.answers.jsonl"
    rows = read_jsonl(out_path)
    want = answers_of(peft_on(lively_dir, adapter_a), load_tokenizer(lively_dir), ASKED, NEW)
    assert [r["answer"] for r in rows] == want and rows[0]["model"] == "alpha"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("5 answers, ") and "tokens/s" in last and last.endswith(f"written to {out_path}")


def test_cli_generate_fails_before_loading(lively_dir, adapter_a, tmp_path, monkeypatch, capsys):
    import tunekit.infer.load as engine

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"promt": "typo"}\n', encoding="utf-8")
    with monkeypatch.context() as m:
        m.setattr(engine, "open_model", lambda *a, **k: pytest.fail("the model loaded before the file was checked"))
        assert main(["generate", str(lively_dir), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")]) == 2
        assert f"{bad}, line 2: no 'messages'" in capsys.readouterr().err
        assert not (tmp_path / "o.jsonl").exists()
        bad.write_text('{"prompt": "ok"}\n', encoding="utf-8")
        assert main(["generate", str(lively_dir), "--input", str(bad), "--output", str(bad)]) == 2
        assert "is the input file" in capsys.readouterr().err

    good = write_jsonl(tmp_path / "good.jsonl", [{"prompt": "Hi"}])
    broken = tmp_path / "broken"
    shutil.copytree(adapter_a, broken)
    (broken / "adapter_model.safetensors").unlink()
    assert main(["generate", str(broken), "--input", str(good)]) == 2
    err = capsys.readouterr().err
    assert "tunekit: checkpoint error:" in err and "missing adapter_model.safetensors" in err
    assert not default_output(good).exists()


# -- answers written in chunks, resumed after an interruption ------------------------------------

MORE = ROWS + [{"prompt": f"Question {i}: how do I reset my password?"} for i in range(5)]  # 10 prompts


@pytest.fixture
def calls(monkeypatch):
    """Every greedy_answers call as (label, prompts received); `calls.fail_on = n` makes call n a Ctrl-C,
    `calls.fake = True` answers without the model."""
    import tunekit.infer.greedy as gen

    real, seen = gen.greedy_answers, []

    class Calls(list):
        fail_on, fake = 0, False

    seen = Calls()

    def spy(model, tokenizer, conversations, max_new_tokens, batch_size, label):
        seen.append((label, len(conversations)))
        if len(seen) == seen.fail_on:
            raise KeyboardInterrupt
        if seen.fake:
            return [f"answer to {c[-1]['content']}" for c in conversations]
        return real(model, tokenizer, conversations, max_new_tokens, batch_size, label)

    monkeypatch.setattr(gen, "greedy_answers", spy)
    return seen


def lines_of_file(path):
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def test_interrupted_run_keeps_its_chunks_and_resumes(lively_dir, tmp_path, calls):
    prompts = read_prompts(write_jsonl(tmp_path / "p.jsonl", MORE))
    model, tok = load_model(lively_dir).eval(), load_tokenizer(lively_dir)
    whole = generate_file(model, tok, prompts, tmp_path / "whole.jsonl", "lively", NEW, batch_size=1)
    want = lines_of_file(whole.path)
    # chunks of 4 batches of 1, in input order, each labelled with where it is in the whole
    assert calls == [("generate 1-4 of 10", 4), ("generate 5-8 of 10", 4), ("generate 9-10 of 10", 2)]

    out, said = tmp_path / "out.jsonl", []
    calls.clear()
    calls.fail_on = 2
    with pytest.raises(KeyboardInterrupt):
        generate_file(model, tok, prompts, out, "lively", NEW, batch_size=1, say=said.append)
    assert not out.exists() and said == [f"generate: 4 of 10 answers are kept in {out}.partial"]
    assert lines_of_file(tmp_path / "out.jsonl.partial")[1:] == want[:4]  # after the header line

    calls.clear()
    calls.fail_on, said[:] = 0, []
    written = generate_file(model, tok, prompts, out, "lively", NEW, batch_size=1, say=said.append)
    assert [n for _, n in calls] == [4, 2]  # only the prompts not yet answered
    assert said == [f"generate: resuming after 4 answers (kept in {out}.partial); 6 to go"]
    assert lines_of_file(out) == want and not (tmp_path / "out.jsonl.partial").exists()
    assert (written.answers, written.resumed) == (10, 4) and 0 < written.tokens < whole.tokens


def test_a_partial_for_other_prompts_or_settings_is_discarded(lively_dir, tmp_path, calls):
    tok = load_tokenizer(lively_dir)
    calls.fake, calls.fail_on = True, 2
    out, said = tmp_path / "out.jsonl", []
    first = read_prompts(write_jsonl(tmp_path / "a.jsonl", MORE))
    with pytest.raises(KeyboardInterrupt):
        generate_file(None, tok, first, out, "lively", NEW, batch_size=1, say=said.append)

    other = read_prompts(write_jsonl(tmp_path / "b.jsonl", MORE[:3] + [{"prompt": "Something else?"}] + MORE[4:]))
    for prompts, new, why in [(other, NEW, "other prompts (the input file or --system)"), (first, NEW + 1, f"--max-new-tokens {NEW}"),
                              (read_prompts(tmp_path / "a.jsonl", system="Be brief."), NEW, "other prompts")]:
        calls.clear()
        calls.fail_on, said[:] = 2, []
        with pytest.raises(KeyboardInterrupt):
            generate_file(None, tok, prompts, out, "lively", new, batch_size=1, say=said.append)
        assert why in said[0] and said[0].endswith("; starting over") and calls[0] == ("generate 1-4 of 10", 4)

    calls.clear()
    calls.fail_on, said[:] = 0, []
    generate_file(None, tok, first, out, "other-model", NEW, batch_size=1, say=said.append)
    assert "another model (lively)" in said[0] and [n for _, n in calls] == [4, 4, 2]
    rows = read_jsonl(out)
    assert [r["answer"] for r in rows] == [f"answer to {p.messages[-1]['content']}" for p in first]
    assert {r["model"] for r in rows} == {"other-model"}


def test_a_torn_last_line_is_cut_off(lively_dir, tmp_path, calls):
    tok = load_tokenizer(lively_dir)
    prompts = read_prompts(write_jsonl(tmp_path / "p.jsonl", MORE))
    calls.fake, calls.fail_on = True, 2
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate_file(None, tok, prompts, out, "lively", NEW, batch_size=1, say=print)
    partial = tmp_path / "out.jsonl.partial"
    with open(partial, "a", encoding="utf-8") as f:  # a crash while the next chunk was written
        f.write(json.dumps({**prompts[4].record, "answer": "x", "model": "lively"}) + "\n" + '{"prompt": "Quest')
    calls.clear()
    calls.fail_on = 0
    generate_file(None, tok, prompts, out, "lively", NEW, batch_size=1, say=print)
    assert calls == [("generate 6-9 of 10", 4), ("generate 10-10 of 10", 1)]  # the whole line written before the crash is kept
    assert [r["answer"] for r in read_jsonl(out)] == [f"answer to {p.messages[-1]['content']}" for p in prompts[:4]] + [
        "x"] + [f"answer to {p.messages[-1]['content']}" for p in prompts[5:]]


def test_cli_ctrl_c_then_rerun(lively_dir, tmp_path, calls, capsys):
    source = write_jsonl(tmp_path / "p.jsonl", MORE)
    args = ["generate", str(lively_dir), "--input", str(source), "--batch-size", "1", "--max-new-tokens", str(NEW)]
    calls.fake, calls.fail_on = True, 3
    assert main(args) == 130
    err = capsys.readouterr().err
    partial = default_output(source).with_name("p.answers.jsonl.partial")
    assert f"8 of 10 answers are kept in {partial}" in err and "rerun the same command to resume" in err
    calls.clear()
    calls.fail_on = 0
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "resuming after 8 answers" in captured.err and calls == [("generate 9-10 of 10", 2)]
    assert captured.out.strip().splitlines()[-1].startswith("10 answers, ") and len(read_jsonl(default_output(source))) == 10
