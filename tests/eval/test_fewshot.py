"""Few-shot retrieval: the most similar training example is chosen and placed last."""

from __future__ import annotations

from tunekit.eval.fewshot import ShotIndex, few_shot_messages


def conv(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


CONVS = [
    conv("How much does the Crest plan cost per seat?", "$43 per seat per month."),
    conv("Where do I rotate an API key?", "Settings > Security > API keys."),
    conv("What does error LQ-4031 mean?", "Run quota exhausted."),
    conv("Which regions do you host in?", "Frankfurt, Oregon and Singapore."),
    [{"role": "system", "content": "x"}] + conv("multi", "turn") + conv("skipped", "as a shot"),
]


def test_nearest_picks_most_similar():
    index = ShotIndex(CONVS)
    assert len(index.shots) == 4  # only single-turn user/assistant pairs are shots
    assert index.nearest("how do I rotate my api key", 1) == [CONVS[1]]
    assert index.nearest("I got error LQ-4031 today", 1) == [CONVS[2]]
    assert index.nearest("crest plan price per seat?", 2)[0] == CONVS[0]


def test_few_shot_messages_order():
    index = ShotIndex(CONVS)
    q = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "rotate api key where"}]
    msgs = few_shot_messages(index, q, 2)
    assert msgs[0] == q[0] and msgs[-1] == q[-1]
    assert len(msgs) == 2 + 2 * 2
    assert msgs[-3:-1] == CONVS[1]  # most similar shot sits right before the question
