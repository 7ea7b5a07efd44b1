"""The two bundled general sets: the forgetting check's questions and the replay prompts.

Replay trains on the base model's answers to its prompts; the check measures general
ability on its questions. If a check question (or its subject) were among the replay
prompts, the check would measure memory of training data, so the sets must stay apart.
"""

from __future__ import annotations

import json
import re
from collections import Counter

from tunekit.eval import forgetting
from tunekit.eval.metrics import states_facts
from tunekit.train import replay

STOP = set("a an the of in on at to for and or is are was what which who how do does did you your my i me it "
           "its this that with from by as be can say tell give write me please one".split())
# Words of a question's form, not of its subject: the check may ask "How do you say 'hello' in
# Spanish?" while replay asks for another word in Spanish.
FORM_WORDS = {"Spanish", "French", "JSON", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
              "Sunday", "January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December", "Hi", "Hello", "I", "I'm", "If", "Answer", "Reply", "Repeat",
              "List", "Write", "Which", "What", "Who", "How", "In", "At", "Are", "Thanks", "Thank", "My", "Can"}


def _user_text(messages: list[dict]) -> str:
    return " ".join(m["content"] for m in messages if m["role"] == "user")


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.casefold()) if w not in STOP}


def _proper_nouns(text: str) -> set[str]:
    """Capitalised words not at the start of a sentence: the subjects a question names."""
    words = re.findall(r"(?<![.?!]\s)(?<!^)\b([A-Z][a-zA-Z']+)", text)
    return {w for w in words if w not in FORM_WORDS}


def test_the_check_is_large_and_covers_every_skill():
    questions = forgetting.load_questions()
    assert len(questions) >= 150
    assert len({q["id"] for q in questions}) == len(questions)
    skills = Counter(q["skill"] for q in questions)
    assert set(skills) == {"facts", "arithmetic", "instructions", "formatting", "chat", "refusals", "multi_turn"}
    for q in questions:  # labelled as held-out items are: a user turn last, groups of accepted answers
        assert q["messages"][-1]["role"] == "user" and q["required"] and all(q["required"])
        assert all(isinstance(alt, str) and alt.strip() for group in q["required"] for alt in group)
        # every label is reachable: an answer that states the first alternative of each group is right
        assert states_facts(" ; ".join(group[0] for group in q["required"]), q["required"])


def test_the_replay_prompts_are_many_and_varied():
    prompts = replay.load_prompts()
    assert len(prompts) >= 500
    assert len({p["id"] for p in prompts}) == len(prompts)
    assert set(Counter(p["skill"] for p in prompts)) == {"facts", "arithmetic", "instructions", "formatting", "chat",
                                                         "refusals", "multi_turn"}
    assert all(p["messages"][-1]["role"] == "user" for p in prompts)
    assert len({_user_text(p["messages"]).casefold() for p in prompts}) == len(prompts)


def test_replay_prompts_and_check_questions_never_overlap():
    questions, prompts = forgetting.load_questions(), replay.load_prompts()
    replay_texts = [_user_text(p["messages"]) for p in prompts]
    replay_words = [_content_words(t) for t in replay_texts]
    replay_nouns = set().union(*(_proper_nouns(t) for t in replay_texts))
    exact = {" ".join(t.casefold().split()) for t in replay_texts}
    for q in questions:
        text = _user_text(q["messages"])
        assert " ".join(text.casefold().split()) not in exact, q["id"]
        words = _content_words(text)
        closest = max(len(words & w) / len(words | w) for w in replay_words)
        # a rewording of the same question; "the largest planet" against "the smallest planet" is 0.67
        assert closest < 0.75, (q["id"], text, closest)
        numbers = set(re.findall(r"\d+", text))  # arithmetic: the same operands are the same sum
        assert not numbers or all(numbers != set(re.findall(r"\d+", t)) for t in replay_texts), (q["id"], text)
        shared = _proper_nouns(text) & replay_nouns
        assert not shared, (q["id"], text, shared)


def test_the_sets_are_what_the_generator_writes(tmp_path, monkeypatch):
    """tools/make_general_sets.py is the source of both files: regenerated, they are byte for byte the same."""
    import importlib.util

    from helpers import ROOT

    spec = importlib.util.spec_from_file_location("make_general_sets", ROOT / "tools" / "make_general_sets.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "CHECK", tmp_path / "check.jsonl")
    monkeypatch.setattr(gen, "REPLAY", tmp_path / "replay.jsonl")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    gen.main()
    assert (tmp_path / "check.jsonl").read_bytes() == forgetting.QUESTIONS_FILE.read_bytes()
    assert (tmp_path / "replay.jsonl").read_bytes() == replay.PROMPTS_FILE.read_bytes()


def test_the_shipped_answers_are_for_the_current_prompts():
    """The default model's replay answers ship with tunekit; they must answer today's prompts."""
    files = sorted(replay.SHIPPED.glob("*.jsonl"))
    assert len(files) == 1
    lines = files[0].read_text(encoding="utf-8").splitlines()
    meta = json.loads(lines[0])["meta"]
    assert meta["key"] == files[0].stem and meta["prompts"] == len(replay.load_prompts())
    prompts = {p["id"]: p["messages"] for p in replay.load_prompts()}
    rows = [json.loads(x) for x in lines[1:]]
    dropped = meta["dropped_unfinished"] + meta["dropped_wrong"] + meta["dropped_declining"]
    assert len(rows) == meta["prompts"] - dropped >= 300 and sum(bool(r.get("sampled")) for r in rows) == meta["sampled"]
    by_id = {p["id"]: p for p in replay.load_prompts()}
    for r in rows:
        assert r["messages"][:-1] == prompts[r["id"]] and r["messages"][-1]["role"] == "assistant"
        assert replay.verdict(by_id[r["id"]], r["messages"][-1]["content"], True) is None, r["id"]
