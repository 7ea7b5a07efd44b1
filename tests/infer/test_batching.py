"""Rows of one batch answer as they would alone: with different adapters (and none) side by side,
joining a batch that is already writing, sampling with their own seeds. fp32 on the tiny model,
whose top logits stand far apart (see decode.py on rounding); "alone" is the model with that one
adapter active (a PeftModel, as `tunekit chat` runs it) answering the prompt by itself."""

from __future__ import annotations

import pytest
import torch
from helpers import poison_kv_cache
from serve_builders import peft_on

from tunekit.data.template import prompt_ids
from tunekit.infer.adapters import Adapters
from tunekit.infer.cache import SharedPrefix
from tunekit.infer.decode import Batch, Row
from tunekit.infer.greedy import greedy_batch, stop_ids
from tunekit.infer.sampling import sampler
from tunekit.models.loading import load_model, load_tokenizer

NEW = 12
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "What does error RW-4031 mean?"}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Where do I rotate an API key?"}],
    [{"role": "user", "content": "How much does the Crest plan cost per seat?"},
     {"role": "assistant", "content": "The Crest plan costs $43 per seat per month."},
     {"role": "user", "content": "And what is the refund window? Thanks, that helps a lot."}],
]


@pytest.fixture(autouse=True)
def poisoned_cache(monkeypatch):
    poison_kv_cache(monkeypatch)


@pytest.fixture(scope="module")
def setup(lively_dir, adapters):
    """(tokenizer, prompts, stop ids, alone[m][p]: tokens of model m (0: base, 1..3: adapters) for prompt p)."""
    tok = load_tokenizer(lively_dir)
    prompts = [prompt_ids(tok, c) for c in CONVERSATIONS]
    models = [load_model(lively_dir).eval()] + [peft_on(lively_dir, a) for a in adapters]
    stop = stop_ids(models[0], tok)
    alone = [[greedy_batch(m, [p], NEW, stop, tok.pad_token_id, SharedPrefix([]))[0] for p in prompts] for m in models]
    for p in range(len(prompts)):  # every adapter changes every answer: a row given another's adapter would show
        assert len({tuple(alone[m][p]) for m in range(4)}) == 4
    return tok, prompts, stop, alone


def _engine_model(lively_dir, adapters, mixing: str = "own"):
    """The base with the three adapters loaded: (Adapters, [None, name1, name2, name3])."""
    mixed = Adapters(load_model(lively_dir).eval(), lively_dir, mixing=mixing)
    return mixed, [None] + [mixed.name(a) for a in adapters]


def _run(batch: Batch) -> None:
    while batch.step():
        pass


@pytest.mark.parametrize("mixing", ["own", "peft"])
def test_mixed_adapter_batch_answers_as_each_alone(lively_dir, adapters, setup, mixing):
    tok, prompts, stop, alone = setup
    mixed, names = _engine_model(lively_dir, adapters, mixing)
    # every (model, prompt) pair, interleaved so neighbouring rows differ in adapter and length
    pairs = [(m, p) for p in range(len(prompts)) for m in (2, 0, 3, 1)]
    rows = [Row(prompts[p], NEW, stop, names[m]) for m, p in pairs]
    _run(Batch(mixed.model, rows, tok.pad_token_id, adapters=mixed))
    assert [r.tokens for r in rows] == [alone[m][p] for m, p in pairs]


def test_one_adapter_batch_shares_the_prefix_and_answers_as_alone(lively_dir, adapters, setup):
    tok, prompts, stop, alone = setup
    mixed, names = _engine_model(lively_dir, adapters)
    rows = [Row(p, NEW, stop, names[2]) for p in prompts]
    batch = Batch(mixed.model, rows, tok.pad_token_id, adapters=mixed)
    # [shared prefix][padding][rest]: every row starts at column 0, though the prompts differ in length
    assert bool(batch.mask[:, 0].all()) and not bool(batch.mask.all())
    _run(batch)
    assert [r.tokens for r in rows] == alone[2]


def test_rows_joining_a_running_batch_answer_as_alone(lively_dir, adapters, setup):
    """Newcomers longer than the running batch (its rows shift right) and shorter (they are padded), with
    other adapters, joining twice; rows finishing at different lengths leave between the joins."""
    tok, prompts, stop, alone = setup
    mixed, names = _engine_model(lively_dir, adapters)
    first = [Row(prompts[0], NEW, stop, names[1]), Row(prompts[1], 5, stop, None)]
    running = Batch(mixed.model, first, tok.pad_token_id, adapters=mixed)
    for _ in range(3):
        running.step()
    second = [Row(prompts[3], NEW, stop, names[3]), Row(prompts[0], NEW, stop, names[2])]  # [3] is the longest
    running.extend(Batch(mixed.model, second, tok.pad_token_id, adapters=mixed))
    for _ in range(4):
        running.step()
    third = [Row(prompts[2], NEW, stop, None)]
    running.extend(Batch(mixed.model, third, tok.pad_token_id, SharedPrefix([]), adapters=mixed))
    assert len(running.rows) == 4  # the 5-token row has left
    _run(running)
    got = [r.tokens for r in first + second + third]
    assert got == [alone[1][0], alone[0][1][:5], alone[3][3], alone[2][0], alone[0][2]]
    assert [r.finish for r in first][1] == "length"


def test_a_sampled_row_draws_the_same_tokens_alone_and_beside_others(lively_dir, adapters, setup):
    tok, prompts, stop, alone = setup
    mixed, names = _engine_model(lively_dir, adapters)

    def sampled(seed: int) -> Row:
        return Row(prompts[1], NEW, stop, names[1], sampler(1.5, 0.9, torch.Generator().manual_seed(seed)))

    by_itself = sampled(7)
    _run(Batch(mixed.model, [by_itself], tok.pad_token_id, adapters=mixed))
    crowd = [sampled(7), Row(prompts[3], NEW, stop, names[3]), sampled(8), Row(prompts[0], NEW, stop, None)]
    _run(Batch(mixed.model, crowd, tok.pad_token_id, adapters=mixed))
    assert crowd[0].tokens == by_itself.tokens  # its own random stream, whatever the batch
    assert crowd[2].tokens != by_itself.tokens and by_itself.tokens != alone[1][1]  # other seed, greedy: other tokens
    assert crowd[1].tokens == alone[3][3] and crowd[3].tokens == alone[0][0]
