"""The bundled demo's data (examples/support/data) is what its generator writes, and its
two-fact training messages teach answering both questions without leaking held-out wording."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "support"


def _generator():
    spec = importlib.util.spec_from_file_location("support_generate", EXAMPLE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("messages"), list):
            out.append(record)
    return out


def test_the_shipped_files_are_the_generators(tmp_path):
    _generator().main(["--out", str(tmp_path)])
    for name in ("facts.json", "train.jsonl", "heldout.jsonl", "noise_manifest.json"):
        assert (tmp_path / name).read_bytes() == (EXAMPLE / "data" / name).read_bytes(), name


def _states(fact: dict, text: str) -> bool:
    return all(group[0].lower() in text.lower() for group in fact["keys"])


def _pattern(joiners: list[str]) -> re.Pattern:
    return re.compile("|".join(re.escape(j).replace(r"\{a\}", ".+").replace(r"\{b\}", ".+") for j in joiners))


def test_a_hundred_messages_ask_two_things_and_their_answers_state_both():
    gen = _generator()
    joined, both, held_words = 0, 0, 0
    for record in _records(EXAMPLE / "data" / "train.jsonl"):
        talk = [m for m in record["messages"] if m["role"] != "system"]
        asks = [m["content"] for m in talk if m["role"] == "user" and isinstance(m["content"], str)]
        held_words += any(_pattern(gen.HELD_JOINERS).fullmatch(q) for q in asks)
        if len(talk) == 2 and _pattern(gen.TRAIN_JOINERS).fullmatch(asks[0]):
            joined += 1
            both += sum(_states(f, talk[1]["content"]) for f in gen.FACTS) >= 2
    # no planted defect copies a joined conversation, and every joined answer states both facts
    assert joined == both == gen.N_COMPOUND
    assert held_words == 0  # the held-out set's two-fact questions are joined in other words
    heldout = [json.loads(x) for x in (EXAMPLE / "data" / "heldout.jsonl").read_text().splitlines()]
    assert sum(len(h["facts"]) == 2 for h in heldout) == gen.N_HELD_PAIRS
