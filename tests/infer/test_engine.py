"""The engine answering many threads at once: requests for different adapters share batches and each
gets the answer it would get alone; adapters load on first use and the least recently used leave;
a cancelled or broken request ends alone."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from serve_builders import peft_on

from tunekit.data.template import prompt_ids
from tunekit.errors import CheckpointError
from tunekit.infer.cache import SharedPrefix
from tunekit.infer.greedy import greedy_batch, stop_ids
from tunekit.infer.scheduler import Ask, Engine
from tunekit.models.loading import load_model, load_tokenizer

NEW = 10
QUESTIONS = ["Hi", "What does error RW-4031 mean?", "Where do I rotate an API key? Thanks, that helps a lot.",
             "How much does the Crest plan cost per seat per month?"]


@pytest.fixture(scope="module")
def setup(lively_dir, adapters):
    tok = load_tokenizer(lively_dir)
    prompts = [prompt_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS]
    models = [load_model(lively_dir).eval()] + [peft_on(lively_dir, a) for a in adapters]
    stop = stop_ids(models[0], tok)
    alone = [[greedy_batch(m, [p], NEW, stop, tok.pad_token_id, SharedPrefix([]))[0] for p in prompts] for m in models]
    return tok, prompts, stop, alone


@pytest.fixture
def engine(lively_dir, setup):
    made = []

    def make(**kw) -> Engine:
        made.append(Engine(load_model(lively_dir).eval(), setup[0].pad_token_id, lively_dir, **kw))
        return made[-1]

    yield make
    for e in made:
        e.close()


def read(request) -> tuple[list[int], str]:
    tokens, finish = [], None
    for event in request:
        tokens += event.tokens
        finish = event.finish or finish
    return tokens, finish


def test_concurrent_requests_share_batches_and_answer_as_alone(engine, adapters, setup):
    tok, prompts, stop, alone = setup
    eng = engine(max_batch=6, window_s=0.02)
    models = [None, *adapters]
    got, errors = {}, []

    def client(k: int) -> None:
        m, p = k % 4, (k // 4 + k) % 4
        try:
            time.sleep(0.002 * k)  # arrivals spread out: some join a batch already writing
            got[k] = (m, p, *read(eng.submit([Ask(prompts[p], NEW, stop, models[m])])))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(14)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(got) == 14
    assert {k: tokens for k, (m, p, tokens, _) in got.items()} == {k: alone[m][p] for k, (m, p, _, _) in got.items()}
    assert all(f in ("stop", "length") for *_, f in got.values())
    assert 1 < eng.widest <= 6  # batched across requests, never past max_batch
    assert eng.steps < 14 * NEW / 2


def test_one_at_a_time_engine_gives_the_same_answers(engine, adapters, setup):
    tok, prompts, stop, alone = setup
    eng = engine(max_batch=1)
    requests = [eng.submit([Ask(prompts[p], NEW, stop, adapters[0])]) for p in range(4)]
    assert [read(r)[0] for r in requests] == alone[1]
    assert eng.widest == 1


def test_adapters_load_on_first_use_and_the_least_recent_leaves(engine, adapters, setup):
    tok, prompts, stop, alone = setup
    eng = engine(adapter_cap=2)
    for m in (1, 2, 3, 1):  # the fourth request needs the adapter evicted by the third
        assert read(eng.submit([Ask(prompts[1], NEW, stop, adapters[m - 1])]))[0] == alone[m][1]
        assert len(eng.adapters.loaded) <= 2
    assert list(eng.adapters.loaded) == [adapters[2].resolve(), adapters[0].resolve()]


def test_n_answers_of_one_request_and_a_cancelled_one(engine, setup):
    tok, prompts, stop, alone = setup
    eng = engine()
    long = eng.submit([Ask(prompts[2], 400, set())])  # no stop token: it would write 400 tokens
    pair = eng.submit([Ask(prompts[0], NEW, stop), Ask(prompts[3], NEW, stop)])
    first = next(iter(long))
    long.cancel()
    tokens, finish = read(long)
    assert finish == "cancelled" and len(first.tokens) + len(tokens) < 400
    answers = {}
    for event in pair:
        answers.setdefault(event.index, []).extend(event.tokens)
    assert answers == {0: alone[0][0], 1: alone[0][3]}


def test_a_broken_adapter_fails_its_request_only(engine, adapters, setup, tmp_path):
    tok, prompts, stop, alone = setup
    broken = tmp_path / "broken"
    shutil.copytree(adapters[0], broken)
    (broken / "adapter_model.safetensors").unlink()
    eng = engine()
    bad = eng.submit([Ask(prompts[0], NEW, stop, broken)])
    good = eng.submit([Ask(prompts[1], NEW, stop, adapters[1])])
    with pytest.raises(CheckpointError, match="missing adapter_model.safetensors"):
        read(bad)
    assert read(good)[0] == alone[2][1]


def test_a_dora_adapter_runs_in_a_batch_of_its_own_beside_the_mixed_one(engine, adapters, dora_adapter, setup, lively_dir):
    tok, prompts, stop, alone = setup
    dora = peft_on(lively_dir, dora_adapter)
    want = [greedy_batch(dora, [p], NEW, stop, tok.pad_token_id, SharedPrefix([]))[0] for p in prompts]
    assert want != alone[0]
    eng = engine(window_s=0.05)
    asks = [(dora_adapter, 0), (None, 1), (dora_adapter, 2), (adapters[0], 3), (dora_adapter, 3)]
    requests = [eng.submit([Ask(prompts[p], NEW, stop, a)]) for a, p in asks]
    got = [read(r)[0] for r in requests]
    assert got == [want[0], alone[0][1], want[2], alone[1][3], want[3]]
    assert eng.adapters.solo == {eng.adapters.loaded[dora_adapter.resolve()]}
