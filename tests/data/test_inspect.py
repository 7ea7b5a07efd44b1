"""`tunekit data inspect` on small hand-made files whose answers are known: counts and
rejects, per-role percentiles, supervised tokens equal to tokenize_chat's, duplicate
clusters, the warnings, the histogram PNG, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_jsonl

from tunekit.cli import main
from tunekit.data import inspect as insp
from tunekit.data.inspect import inspect_data
from tunekit.data.inspect_view import histogram_png, render_text
from tunekit.data.records import load_records
from tunekit.data.stats import token_counts
from tunekit.data.template import tokenize_chat

PNG = b"\x89PNG\r\n\x1a\n"
LONG = ("To rotate an API key, open Settings, then Security, then API keys, pick the key you want to replace "
        "and click Rotate; the old key keeps working for twenty four hours so running jobs do not fail.")


def chat(user: str, answer: str, system: str | None = None, *more: str) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user},
                                                                          {"role": "assistant", "content": answer}]
    for i in range(0, len(more), 2):
        msgs += [{"role": "user", "content": more[i]}, {"role": "assistant", "content": more[i + 1]}]
    return {"messages": msgs}


def distinct(n: int, start: int = 0) -> list[dict]:
    """n conversations with different wording (no near duplicates among them)."""
    words = ["plan", "seat", "invoice", "webhook", "refund", "export", "token", "region", "quota", "backup",
             "audit", "team", "domain", "alert", "schedule", "limit", "trial", "report", "mirror", "cache"]
    out = []
    for i in range(start, start + n):
        a, b = words[i % 20], words[(i % 20 + i // 20 + 1) % 20]  # a distinct pair for each i < 380
        out.append(chat(f"Question {i}: how does the {a} relate to my {b}?",
                        f"Answer {i}: the {a} " + "and the " * (i % 5) + f"{b} are linked ({i * 37 % 101})."))
    return out


def rows_fixture() -> list:
    """12 valid lines (3 exact copies of one, a near duplicate, two system prompts, one
    alpaca row) and 2 invalid ones."""
    rows = distinct(6)
    rows.append(chat("How do I rotate a key?", LONG, "Be brief."))
    rows.append(chat("how do I  ROTATE a key?", LONG, "Be brief."))  # exact copy after case/space folding
    rows.append(chat("How do I rotate a key?", LONG, "Be brief."))  # a third copy
    rows.append(chat("How do I rotate a key?", LONG.replace("twenty four", "twenty-four"), "Be verbose."))  # near
    rows.append(chat("Hi", "Hello!", None, "And the refund window?", "Thirty days from purchase."))
    rows.append({"instruction": "Name the refund window.", "output": "Thirty days."})
    rows.append({"messages": [{"role": "user", "content": "   "}, {"role": "assistant", "content": "x"}]})
    rows.append({"foo": 1})
    return rows


@pytest.fixture(scope="module")
def sample(tmp_path_factory, tiny_tokenizer):
    path = write_jsonl(tmp_path_factory.mktemp("insp") / "train.jsonl", rows_fixture())
    return path, inspect_data(path, tiny_tokenizer, max_length=60)


def test_counts_rejects_and_formats(sample):
    _, r = sample
    assert r["records"] == {"read": 14, "valid": 12, "conversations": 12, "documents": 0, "distinct": 10,
                            "distinct_conversations": 10, "rejected": 2}
    assert r["rejects"]["by_reason"] == {"empty_turn": 1, "missing_messages": 1}
    assert [e["where"] for e in r["rejects"]["examples"]] == ["train.jsonl:13", "train.jsonl:14"]
    assert r["formats"] == {"chat": 12, "alpaca": 1, "unreadable": 1}
    assert r["turns"]["max"] == 2 and r["turns"]["multi_turn"] == 1
    assert json.loads(json.dumps(r)) == r  # JSON-ready


def test_per_role_percentiles_and_example_lengths(sample, tiny_tokenizer):
    path, r = sample
    records, _ = load_records(path)
    for role in ("system", "user", "assistant"):
        lengths = sorted(token_counts(tiny_tokenizer, [m["content"] for rec in records for m in rec.messages
                                                       if m["role"] == role]))
        got = r["tokens"]["by_role"][role]
        n = len(lengths)
        assert got["count"] == n and got["total"] == sum(lengths) and got["max"] == lengths[-1]
        assert got["p50"] == lengths[int(0.5 * (n - 1) + 0.5)] and got["p90"] == lengths[int(0.9 * (n - 1) + 0.5)]
    full = [tokenize_chat(tiny_tokenizer, rec.messages) for rec in records]
    ex = r["tokens"]["example"]
    assert ex["total"] == sum(len(t.input_ids) for t in full) and ex["max"] == max(len(t.input_ids) for t in full)
    over = sum(len(t.input_ids) > 60 for t in full)
    assert over and r["tokens"]["over_max_length"]["count"] == over
    assert sum(r["tokens"]["histogram"]["counts"]) + r["tokens"]["histogram"]["overflow"] == 12


@pytest.mark.parametrize("train_on", ["all_assistant", "last_assistant", "all"])
def test_supervised_tokens_equal_tokenize_chat(sample, tiny_tokenizer, train_on):
    path, _ = sample
    records, _ = load_records(path)
    want = sum(tokenize_chat(tiny_tokenizer, rec.messages, train_on).supervised for rec in records)
    r = inspect_data(path, tiny_tokenizer, train_on=train_on, epochs=2.5)
    assert r["supervised"]["total"] == want and not r["supervised"]["estimated"]
    assert r["per_epoch"]["supervised"] == want and r["per_epoch"]["supervised_all_epochs"] == round(2.5 * want)
    assert r["per_epoch"]["tokens_all_epochs"] == round(2.5 * r["tokens"]["example"]["total"])


def test_supervised_tokens_estimated_from_a_sample_past_the_limit(tmp_path, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(insp, "EXACT_UP_TO", 40)
    monkeypatch.setattr(insp, "SAMPLE_CAP", 20)
    monkeypatch.setattr(insp, "BATCH", 16)
    rows = distinct(200)
    path = write_jsonl(tmp_path / "big.jsonl", rows)
    exact = sum(tokenize_chat(tiny_tokenizer, row["messages"]).supervised for row in rows)
    r = inspect_data(path, tiny_tokenizer)
    sup = r["supervised"]
    assert sup["estimated"] and 0 < sup["sample"] <= 21
    assert abs(sup["total"] - exact) / exact < 0.15
    assert "estimated from a random sample" in render_text(r)
    assert inspect_data(path, tiny_tokenizer)["supervised"] == sup  # seeded


def test_duplicate_clusters(sample):
    _, r = sample
    exact, near = r["duplicates"]["exact"], r["duplicates"]["near"]
    assert exact["clusters"] == 1 and exact["extra_copies"] == 2 and exact["largest"] == [3]
    assert exact["examples"][0]["pair"] == ["train.jsonl:7", "train.jsonl:8"]
    assert near["clusters"] == 1 and near["extra_copies"] == 1
    assert near["examples"][0]["pair"] == ["train.jsonl:7", "train.jsonl:10"] and near["examples"][0]["similarity"] >= 0.85


def test_warnings(sample):
    _, r = sample
    text = "\n".join(r["warnings"])
    assert "only 10 distinct training conversations: far too few" in text
    assert "2 of 14 records are invalid" in text and "train.jsonl:13" in text
    assert "2 different system prompts" in text
    assert "only 4 of 12 conversations have a system prompt" in text
    assert "mixed formats in one dataset (chat 12, alpaca 1)" in text
    assert "longer than max_length 60" in text
    assert "2 exact duplicate copies" in text and "1 near-duplicate copies" in text
    summary = render_text(r)
    assert summary.splitlines()[2] == "Warnings:" and r["warnings"][0] in summary.splitlines()[3]


def test_few_but_not_very_few_and_a_degenerate_answer(tmp_path, tiny_tokenizer):
    rows = distinct(30)
    for q in ("Can you write me a poem?", "What's the weather in Paris today?", "Who won the match yesterday?",
              "Tell me a joke about cats.", "Translate 'hello' into Japanese."):
        rows.append(chat(q, "I'm sorry, I cannot help with that."))
    r = inspect_data(write_jsonl(tmp_path / "t.jsonl", rows), tiny_tokenizer)
    few = [w for w in r["warnings"] if "distinct training conversations" in w]
    assert len(few) == 1 and "few hundred good examples" in few[0] and "far too few" not in few[0]
    assert any("same assistant answer is 5 of 35" in w for w in r["warnings"])
    assert not any("system prompt" in w or "mixed formats" in w or "duplicate" in w for w in r["warnings"])
    assert r["answers"]["most_repeated"][0] == {"count": 5, "text": "I'm sorry, I cannot help with that."}


def test_enough_clean_data_has_no_warnings(tmp_path, tiny_tokenizer):
    r = inspect_data(write_jsonl(tmp_path / "t.jsonl", distinct(120)), tiny_tokenizer)
    assert r["warnings"] == [], r["warnings"]
    assert render_text(r).splitlines()[2] == "No warnings."


def test_documents_are_counted_as_documents(tmp_path, tiny_tokenizer):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(LONG * 3, encoding="utf-8")
    (folder / "b.txt").write_text("What does error RW-4031 mean? It means the webhook signature did not match.")
    r = inspect_data(folder, tiny_tokenizer, max_length=64)
    n = token_counts(tiny_tokenizer, [LONG * 3])[0]
    assert r["records"]["documents"] == 2 and r["records"]["conversations"] == 0
    assert r["tokens"]["documents_chunked"] == 1 and r["tokens"]["over_max_length"]["count"] == 0
    assert r["tokens"]["longest"] == {"tokens": n + 1, "where": "a.md:1"}  # plus the EOS (no BOS added)
    assert not any("conversations" in w for w in r["warnings"])


def test_histogram_png(sample, tmp_path):
    _, r = sample
    out = histogram_png(r, tmp_path / "h.png")
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 2000
    skewed = histogram_png([10] * 500 + [12] * 40 + [5000], tmp_path / "raw.png", max_length=512)
    assert skewed.read_bytes().startswith(PNG)
    assert histogram_png([], tmp_path / "empty.png").read_bytes().startswith(PNG)


def test_missing_path_and_bad_settings(tmp_path, tiny_tokenizer):
    from tunekit.errors import ConfigError, DataError

    with pytest.raises(DataError, match="nope.jsonl not found"):
        inspect_data(tmp_path / "nope.jsonl", tiny_tokenizer)
    with pytest.raises(DataError, match="train_on"):
        inspect_data(tmp_path, tiny_tokenizer, train_on="some")
    with pytest.raises(ConfigError, match="max_length"):
        inspect_data(tmp_path, tiny_tokenizer, max_length=0)
    with pytest.raises(ConfigError, match="unknown format 'csv'"):
        inspect_data(tmp_path, tiny_tokenizer, fmt="csv")


def test_cli_text_json_and_files(tmp_path, tiny_model_dir, offline_home, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "data" / "train.jsonl", rows_fixture())
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    path.parent.chmod(0o555)  # a read-only data folder (root writes there anyway: checked below)
    try:
        assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--max-length", "60"]) == 0
    finally:
        path.parent.chmod(0o755)
    out = capsys.readouterr().out
    assert "Warnings:" in out and "far too few" in out and "Exact duplicates: 1 clusters" in out
    folder = Path("runs") / "inspect" / "train"  # the default: under the current folder, named after the data
    assert f"wrote {folder / 'inspect.json'}" in out
    assert (folder / "token_lengths.png").read_bytes().startswith(PNG)
    saved = json.loads((folder / "inspect.json").read_text())
    assert saved["settings"]["max_length"] == 60 and saved["model"] == str(tiny_model_dir)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.jsonl"]  # nothing left beside the data

    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir), "--json", "--train-on", "all",
                 "--out", str(tmp_path / "o")]) == 0
    cap = capsys.readouterr()
    report = json.loads(cap.out)
    assert report["supervised"]["train_on"] == "all" and "wrote" in cap.err
    assert (tmp_path / "o" / "inspect.json").is_file() and (tmp_path / "o" / "token_lengths.png").is_file()


def test_cli_takes_settings_from_a_config(tmp_path, tiny_model_dir, offline_home, capsys):
    from helpers import write_config

    path = write_jsonl(tmp_path / "train.jsonl", distinct(30))
    cfg = write_config(tmp_path / "c.yaml", {"model": {"base": str(tiny_model_dir)},
                                             "data": {"train": "train.jsonl", "max_length": 200},
                                             "train": {"epochs": 3}})
    assert main(["data", "inspect", "--config", str(cfg), "--json", "--out", str(tmp_path / "o")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source"] == str(path) and report["settings"]["max_length"] == 200
    assert report["per_epoch"]["epochs"] == 3


def test_cli_says_where_it_cannot_write(tmp_path, tiny_model_dir, offline_home, capsys, monkeypatch):
    path = write_jsonl(tmp_path / "train.jsonl", distinct(3))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where the runs folder would be")
    assert main(["data", "inspect", str(path), "--model", str(tiny_model_dir)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and str(Path("runs") / "inspect" / "train") in err and "--out" in err


def test_cli_errors_exit_2(tmp_path, tiny_model_dir, offline_home, capsys):
    assert main(["data", "inspect", str(tmp_path / "missing.jsonl"), "--model", str(tiny_model_dir)]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert main(["data", "inspect", str(tmp_path / "empty.jsonl"), "--model", str(tiny_model_dir)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["data", "inspect"]) == 2
    assert "give the data to inspect" in capsys.readouterr().err
