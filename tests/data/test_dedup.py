"""Near-duplicate detection: signatures estimate 5-gram Jaccard, LSH finds what it must,
groups are transitive, the bundled example's planted near duplicates are all caught."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from helpers import EXAMPLE

from tunekit.data.dedup import NUM_PERM, conversation_key, exact_hash, find_near_duplicates, signatures, similar_groups
from tunekit.data.records import load_records

_SEP = re.compile(r"[\W_]+")
WORDS = ("plan seat invoice billing workspace admin export connector token rotate region webhook quota "
         "refund trial upgrade schedule retry timeout archive password policy audit report dashboard").split()


def _reference_jaccard(a: str, b: str) -> float:
    """The definition the signatures estimate: Jaccard of normalised character 5-gram sets."""
    def grams(t: str) -> set[str]:
        t = _SEP.sub(" ", t.casefold()).strip()
        return {t[i : i + 5] for i in range(len(t) - 4)} if len(t) >= 5 else {t}
    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def _sentence(rng: random.Random, vocab: tuple[str, ...] = WORDS) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(6, 12))).capitalize() + "."


def _made_up_words(rng: random.Random, n: int = 400) -> tuple[str, ...]:
    """Random letter strings: sentences made of them share few 5-grams by chance."""
    return tuple("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))) for _ in range(n))


def _text(rng: random.Random, n: int = 10) -> str:
    return " ".join(_sentence(rng) for _ in range(n))


def _est(sigs: np.ndarray, i: int, j: int) -> float:
    return float((sigs[i] == sigs[j]).mean())


BASE = "user: how much does the crest plan cost per seat each month for our team\nassistant: the crest plan costs $43 per seat per month."
OTHER = "user: where do i rotate an api key?\nassistant: go to settings > security > api keys and click rotate."


def test_signature_shape_dtype_and_identical_texts():
    sigs = signatures([BASE, OTHER, BASE])
    assert sigs.shape == (3, NUM_PERM) and sigs.dtype == np.uint32
    assert (sigs[0] == sigs[2]).all()
    assert find_near_duplicates(sigs, 0.85) == {2: (0, 1.0)}


def test_one_word_edit_found_and_unrelated_text_kept():
    edited = BASE.replace("for our team", "for our whole team")
    typo = BASE.replace("month", "mnoth", 1)
    dup = find_near_duplicates(signatures([BASE, OTHER, edited, typo]), threshold=0.85)
    assert set(dup) == {2, 3}
    assert dup[2][0] == 0 and dup[2][1] >= 0.85 and dup[3][0] == 0


def test_unrelated_support_conversations_are_not_matched():
    records, _ = load_records(EXAMPLE / "heldout.jsonl", need_assistant=False)
    keys = list(dict.fromkeys(conversation_key(r.messages) for r in records))  # distinct questions
    sigs = signatures(keys)
    truly_near = {i for i, (j, _) in find_near_duplicates(sigs, 0.85).items() if _reference_jaccard(keys[i], keys[j]) >= 0.75}
    assert len(find_near_duplicates(sigs, 0.85)) - len(truly_near) <= 0.02 * len(keys)


def test_punctuation_case_and_spacing_do_not_matter():
    rng = random.Random(3)
    alphabet = "aAbBcß_ -.,!?\n\tÉé1😀Σς"
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        normalised = _SEP.sub(" ", text.casefold()).strip()
        assert (signatures([text]) == signatures([normalised])).all(), repr(text)
    assert (signatures(["Hello, World!!"]) == signatures(["  hello world"])).all()


def test_estimates_track_true_jaccard():
    rng = random.Random(0)
    errors = []
    for k in range(60):
        a = _text(rng)
        sents = a.split(". ")
        keep = rng.randint(0, len(sents))  # share a varying number of sentences
        b = ". ".join(sents[:keep] + [_sentence(rng)[:-1] for _ in range(len(sents) - keep)])
        sigs = signatures([a, b], seed=k)
        errors.append(_est(sigs, 0, 1) - _reference_jaccard(a, b))
    errors = np.array(errors)
    assert np.abs(errors).max() < 0.12, errors
    assert np.abs(errors).mean() < 0.04
    assert abs(errors.mean()) < 0.02  # unbiased


def test_short_texts_are_estimated_too():
    sigs = signatures(["refund please", "refund pleas", "upgrade now"])
    assert abs(_est(sigs, 0, 1) - _reference_jaccard("refund please", "refund pleas")) < 0.15
    assert _est(sigs, 0, 2) < 0.1


def test_seeded_and_independent_of_batching():
    rng = random.Random(1)
    texts = [_text(rng, rng.randint(0, 4)) for _ in range(600)] + ["", "a", "ab c"]
    whole = signatures(texts, seed=7)
    assert (whole == signatures(texts, seed=7)).all()
    pieces = np.concatenate([signatures(texts[i : i + 37], seed=7) for i in range(0, len(texts), 37)])
    assert (whole == pieces).all()
    assert (whole != signatures(texts, seed=8)).mean() > 0.9


def test_empty_and_very_short_texts():
    texts = ["", "!!!", "a", "ab", "abcd", "abcde", "A B", "a b"]
    sigs = signatures(texts)
    assert sigs.shape == (len(texts), NUM_PERM)
    assert (sigs[0] == sigs[1]).all()  # both normalise to ""
    assert (sigs[6] == sigs[7]).all()
    dup = find_near_duplicates(sigs, 0.85)
    assert dup == {1: (0, 1.0), 7: (6, 1.0)}
    groups = similar_groups(sigs, 0.7)
    assert groups[0] == groups[1] and groups[6] == groups[7] and len(set(groups.tolist())) == 6
    assert signatures([]).shape == (0, NUM_PERM)
    assert find_near_duplicates(signatures([]), 0.85) == {} and similar_groups(signatures([]), 0.7).shape == (0,)


def _chain(steps: int = 5) -> list[str]:
    """Texts of eight equal-length sentences, each the previous with one more sentence
    swapped: neighbours are 7/9 ~ 0.78 alike, two steps apart 6/10, four steps 4/12."""
    rng = random.Random(5)
    vocab = tuple(w for w in _made_up_words(rng) if len(w) == 6)
    sentence = lambda: " ".join(rng.choice(vocab) for _ in range(9)) + "."  # noqa: E731
    sents = [sentence() for _ in range(8)]
    chain = []
    for k in range(steps):
        chain.append(" ".join(sents))
        sents[k] = sentence()
    return chain


def test_groups_are_transitive():
    texts = _chain() + [OTHER]
    sigs = signatures(texts)
    assert all(_est(sigs, k, k + 1) >= 0.7 for k in range(4)) and _est(sigs, 0, 4) < 0.5
    assert similar_groups(sigs, 0.7).tolist() == [0, 0, 0, 0, 0, 1]


def test_a_duplicate_never_represents_a_cluster():
    sigs = signatures(_chain())
    assert all(_est(sigs, k, k + 1) >= 0.7 for k in range(4))
    assert _est(sigs, 0, 2) < 0.7 and _est(sigs, 2, 4) < 0.7
    # 1 duplicates 0; 2 resembles only 1, which is gone, so 2 stays and 3 duplicates it.
    assert {i: j for i, (j, _) in find_near_duplicates(sigs, 0.7).items()} == {1: 0, 3: 2}


def test_large_families_of_similar_texts():
    # Many near-identical texts fill LSH buckets far past the pairwise window.
    rng = random.Random(2)
    base = _text(rng, 8)
    texts = [base + f" order {i:05d} {rng.choice(WORDS)}" for i in range(300)]
    sigs = signatures(texts)
    dup = find_near_duplicates(sigs, 0.85)
    assert set(dup) == set(range(1, 300)) and all(j == 0 for j, _ in dup.values())
    assert set(similar_groups(sigs, 0.7).tolist()) == {0}


def test_groups_keep_unrelated_texts_apart():
    rng = random.Random(4)
    texts = [_text(rng, 6) for _ in range(300)]
    texts += [t.replace(" ", "  ").upper() for t in texts[:50]]  # same after normalisation
    groups = similar_groups(signatures(texts), 0.7)
    assert len(set(groups.tolist())) == 300
    assert (groups[300:] == groups[:50]).all()


def test_planted_near_duplicates_of_the_example_are_found():
    manifest = json.loads((EXAMPLE / "noise_manifest.json").read_text())
    records, _ = load_records(EXAMPLE / "train.jsonl")
    # As the prepare stage does: exact duplicates first, then near duplicates among the rest.
    seen, kept, exact = set(), [], set()
    for r in records:
        h = exact_hash(r.messages)
        (exact.add(r.line) if h in seen else kept.append(r)), seen.add(h)
    dup = find_near_duplicates(signatures([conversation_key(r.messages) for r in kept]), 0.85)
    near = {kept[i].line: kept[j].line for i, (j, _) in dup.items()}
    planted = {d["line"] for d in manifest["defects"]}
    for d in manifest["defects"]:
        if d["kind"] == "near_duplicate":
            assert d["line"] in near or d["line"] in exact, d
            if d["line"] in near and d["of_line"] not in near:
                assert near[d["line"]] == d["of_line"], d
    extra = [line for line in near if line not in planted]
    assert len(extra) <= 0.02 * manifest["valid_lines"], extra


@pytest.mark.parametrize("threshold", [0.7, 0.85])
def test_every_pair_at_the_threshold_is_a_candidate(threshold):
    # Pairs of varying similarity: every pair whose estimate reaches the threshold must be
    # reported (LSH misses none), and none below it.
    rng = random.Random(6)
    texts = []
    for _ in range(150):
        a = _text(rng, 12)
        sents = a.split(". ")
        cut = rng.randint(8, 12)
        texts += [a, ". ".join(sents[:cut] + [_sentence(rng)[:-1] for _ in range(12 - cut)])]
    sigs = signatures(texts)
    groups = similar_groups(sigs, threshold)
    for i in range(0, len(texts), 2):
        assert (groups[i] == groups[i + 1]) == (_est(sigs, i, i + 1) >= threshold), i


def test_long_texts_are_signed_in_pieces_with_the_same_result(monkeypatch):
    # Texts over dedup._LONG characters are cut to bound memory; the pieces' 5-grams are
    # exactly the whole text's, so the signature must not change.
    import tunekit.data.dedup as dedup

    rng = random.Random(8)
    words = ["alpha", "Beta", "γάμμα", "δ", "x", "straße", "İstanbul", "naïve", "123456", "__", "...", "😀", "ΣΊΣΥΦΟΣ"]
    texts = ["!! " + " ".join(rng.choice(words) + rng.choice(["", ",", "!!", "\n"]) for _ in range(3000)) + " ...",
             "a short one", "-- " * 400]
    whole = signatures(texts, seed=3)
    monkeypatch.setattr(dedup, "_LONG", 200)
    assert (signatures(texts, seed=3) == whole).all()
