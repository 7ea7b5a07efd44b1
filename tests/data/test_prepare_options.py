"""Prepare options beyond the chat defaults: documents chunked with overlap, history
truncation, PII masking, and a split that never puts similar records on both sides."""

from __future__ import annotations

import json

import numpy as np
from helpers import example_conversations, write_jsonl

from tunekit.config import Config
from tunekit.data.batches import load_examples
from tunekit.data.documents import chunk_document, tokenize_text
from tunekit.data.prepare import prepare
from tunekit.data.split import split_groups
from tunekit.data.template import IGNORE


def _cfg(train, **data) -> Config:
    return Config.model_validate({"data": {"train": str(train), **data}})


def _rows(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


DOC = " ".join(f"Paragraph {i}: the Loomquay scheduler retries failed runs {i % 7} times before it alerts the owner." for i in range(60))


def test_document_windows_cover_the_text_once_with_overlap_as_context(tiny_tokenizer):
    rows = chunk_document(tiny_tokenizer, DOC, max_length=128, overlap=16)
    assert len(rows) > 3 and rows[0]["doc_start"] and rows[-1]["doc_end"]
    assert not any(r["doc_end"] for r in rows[:-1]) and not any(r["doc_start"] for r in rows[1:])
    assert "".join(r["text"] for r in rows).replace(" ", "") == DOC.replace(" ", "")  # every character learnt once
    for prev, row in zip(rows, rows[1:]):
        assert row["context"] and prev["text"].endswith(row["context"].rstrip()) or row["context"].strip() in prev["text"]
    for r in rows:
        ex = tokenize_text(tiny_tokenizer, r["text"], r["context"], r["doc_start"], r["doc_end"])
        assert len(ex.input_ids) <= 128
        n_ctx = len(tiny_tokenizer(r["context"], add_special_tokens=False)["input_ids"]) if r["context"] else 0
        assert all(t == IGNORE for t in ex.labels[:n_ctx])  # context carries no loss
        assert ex.supervised >= len(ex.input_ids) - n_ctx - 2


def test_text_folder_prepares_into_windows_that_train(tiny_tokenizer, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scheduler.md").write_text("# Scheduler\n\n" + DOC, encoding="utf-8")
    (docs / "billing.txt").write_text("Invoices are issued on the first of the month. " * 40, encoding="utf-8")
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    report = prepare(_cfg(docs, max_length=96, chunk_overlap=8, valid_fraction=0.0), tmp_path / "out", tiny_tokenizer)
    assert report["formats"] == {"text": 2}
    assert report["documents"]["documents"] == 2 and report["documents"]["chunks"] == report["train"] > 2
    assert any("skipped 1 file" in n for n in report["notes"])
    examples = load_examples(tmp_path / "out" / "train.jsonl", tiny_tokenizer)
    assert all(len(e.input_ids) <= 96 and e.supervised > 0 for e in examples)


def test_truncate_history_keeps_the_latest_exchanges(tiny_tokenizer, tmp_path):
    turns = []
    for i in range(12):
        turns += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": f"answer {i} " * 3}]
    rows = [{"messages": [{"role": "system", "content": "Be brief."}] + turns}]
    src = write_jsonl(tmp_path / "long.jsonl", rows + example_conversations(3))
    dropped = prepare(_cfg(src, max_length=200, valid_fraction=0.0, max_reject_fraction=1.0), tmp_path / "a", tiny_tokenizer)
    assert dropped["rejects_by_reason"] == {"over_long": 1}
    assert "truncate_history" in _rows(tmp_path / "a" / "rejects.jsonl")[0]["detail"]

    kept = prepare(_cfg(src, max_length=200, valid_fraction=0.0, over_length="truncate_history"), tmp_path / "b", tiny_tokenizer)
    assert kept["rejected"] == 0 and kept["cleaning"]["history_truncated"] == 1
    msgs = _rows(tmp_path / "b" / "train.jsonl")[0]["messages"]
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[-1]["content"].startswith("answer 11") and len(msgs) < 25
    assert msgs[1]["role"] == "user"


def test_pii_is_masked_and_counted(tiny_tokenizer, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Mail me at jo.doe@example.com or call +44 20 7946 0958"},
                          {"role": "assistant", "content": "Card 4111 1111 1111 1111 noted."}]}]
    src = write_jsonl(tmp_path / "pii.jsonl", rows)
    report = prepare(_cfg(src, valid_fraction=0.0, mask_pii=["email", "phone", "card"]), tmp_path / "out", tiny_tokenizer)
    text = (tmp_path / "out" / "train.jsonl").read_text()
    assert "example.com" not in text and "7946" not in text and "4111" not in text
    assert "[EMAIL]" in text and "[PHONE]" in text and "[CARD]" in text
    assert report["cleaning"]["pii_email_masked"] == report["cleaning"]["pii_phone_masked"] == report["cleaning"]["pii_card_masked"] == 1


def test_split_moves_valid_members_of_straddling_groups_and_tops_up():
    groups = np.array([0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 15, 16])
    for seed in range(20):
        valid, stats = split_groups(groups, 0.2, seed)
        assert valid.sum() == 4  # topped up to the target
        for g in set(groups.tolist()):
            sides = set(valid[groups == g].tolist())
            assert len(sides) == 1, (seed, g)  # no group on both sides
        again, _ = split_groups(groups, 0.2, seed)
        assert (again == valid).all()
    moved = [split_groups(groups, 0.2, s)[1]["moved_to_train"] for s in range(20)]
    assert any(moved)  # some seeds first drew a member of group 0 or 9


def test_similar_records_never_straddle_the_split(tiny_tokenizer, tmp_path):
    base = example_conversations(60)
    # Paraphrase-like copies: similar (Jaccard 0.75-0.95) but below the near-duplicate threshold.
    twins = []
    for r in base[:20]:
        m = json.loads(json.dumps(r))
        m["messages"][0]["content"] += " Thanks!"
        twins.append(m)
    src = write_jsonl(tmp_path / "t.jsonl", base + twins)
    report = prepare(_cfg(src, valid_fraction=0.25, near_dup_threshold=0.95), tmp_path / "out", tiny_tokenizer)
    side = {json.dumps(r["messages"]): name for name in ("train", "valid") for r in _rows(tmp_path / "out" / f"{name}.jsonl")}
    assert "valid" in side.values() and report["split"]["similarity"] == 0.7
    pairs = [(json.dumps(b["messages"]), json.dumps(t["messages"])) for b, t in zip(base, twins)]
    assert all(side[b] == side[t] for b, t in pairs)
    assert report["split"]["moved_to_train"] + report["split"]["topped_up"] > 0
