"""greedy_batch's shortcuts (shared-prefix prefill, prefill in length groups, preallocated
cache, output layer in vocabulary chunks) keep its answers equal to `generate(do_sample=False)`
on the same left-padded batch, token for token."""

from __future__ import annotations

import pytest
import torch
from helpers import poison_kv_cache

from tunekit.data.template import prompt_ids
from tunekit.infer import decode as gen
from tunekit.infer.cache import SharedPrefix, common_prefix
from tunekit.infer.greedy import greedy_answers, greedy_batch
from tunekit.models.loading import load_model
from tunekit.models.logits import OutputLayer, Post

QUESTIONS = ["Hi", "Where do I rotate an API key? Thanks, that helps a lot.", "What does error RW-4031 mean?",
             "How much does the Crest plan cost per seat per month, and what is the refund window?",
             "What is the refund window?"]


def _sharpen(m):
    """Larger random weights: at the default init the tiny model writes one token over and over,
    which would let a decoder with wrong positions, mask or cache columns pass."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return _sharpen(load_model(tiny_model_dir))


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    """Chat prompts: the template's system turn makes them share a prefix."""
    return [prompt_ids(tiny_tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    """Shortcuts sized for SmolLM2 would not show on the tiny model: the vocabulary (400) fits in one
    1024 chunk (64 makes the chunked argmax combine 7), and a few short prompts would prefill in one
    group (no overhead: one group per prompt length). Buffers start as NaN, so a cache column read
    before it is written (or zeroed, for padding) turns answers into garbage."""
    monkeypatch.setattr(gen, "HEAD_CHUNK", 64)
    monkeypatch.setattr(gen, "PREFILL_OVERHEAD", 0)
    poison_kv_cache(monkeypatch)


def _generate(model, prompts, n, stop, pad):
    """Reference: `generate` on the whole left-padded batch (as bench/vs_trl_child.py runs it),
    each answer cut before its first stop token."""
    ids, mask = gen.left_pad(prompts, pad)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, num_beams=1,
                             eos_token_id=sorted(stop), pad_token_id=pad, use_cache=True,
                             temperature=None, top_p=None, top_k=None)
    answers = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop), len(row))
        answers.append(row[:cut])
    return answers


def _assert_not_degenerate(answers):
    assert len({tuple(a) for a in answers}) == len(answers)
    assert all(len(set(a)) > 2 for a in answers if len(a) > 4)


def test_common_prefix_leaves_every_prompt_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # not 3: the shorter prompt keeps its last token
    assert common_prefix([[1, 2], [3, 2]]) == 0
    assert common_prefix([[7, 8, 9]]) == 2


@pytest.mark.parametrize("overhead", [0, 10**6], ids=["group-per-length", "one-group"])
def test_shared_prefix_equals_generate(model, prompts, tiny_tokenizer, monkeypatch, overhead):
    monkeypatch.setattr(gen, "PREFILL_OVERHEAD", overhead)
    assert common_prefix(prompts) > 5  # the system turn
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    want = _generate(model, prompts, 12, stop, pad)
    assert greedy_batch(model, prompts, 12, stop, pad) == want
    assert all(len(w) == 12 for w in want)
    _assert_not_degenerate(want)


def test_no_shared_prefix_equals_generate(model, tiny_tokenizer):
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 400, (n,), generator=g).tolist() for n in (5, 9, 14, 3)]
    prompts[1][0] = prompts[0][0] + 1
    assert common_prefix(prompts) == 0
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    want = _generate(model, prompts, 10, stop, pad)
    assert greedy_batch(model, prompts, 10, stop, pad) == want
    _assert_not_degenerate(want)


def test_rows_finishing_at_different_steps(model, prompts, tiny_tokenizer):
    pad, eos = tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id
    free = _generate(model, prompts, 10, {eos}, pad)
    # Stop tokens taken from what rows write at steps 0, 2 and 5: rows end at different steps,
    # and the cache drops their rows while the others go on.
    stop = {eos, free[0][2], free[1][5], free[3][0]}
    want = _generate(model, prompts, 10, stop, pad)
    assert len({len(w) for w in want}) >= 3 and max(len(w) for w in want) > 3
    assert greedy_batch(model, prompts, 10, stop, pad) == want


def test_batch_of_one(model, prompts, tiny_tokenizer):
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    for p in prompts[:2]:
        want = _generate(model, [p], 9, stop, pad)
        assert len(want[0]) == 9
        assert greedy_batch(model, [p], 9, stop, pad) == want


def test_prefix_shared_across_batches(model, prompts, tiny_tokenizer):
    """greedy_answers' way: one prefix for all prompts, run once, reused by every batch (a batch of
    one included, whose own common prefix would be all but its last token)."""
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    shared = SharedPrefix.of(prompts)
    assert 5 < len(shared.tokens) < min(len(p) for p in prompts) - 1
    kv = None
    for batch in ([prompts[0]], prompts[1:3], prompts[3:]):
        assert greedy_batch(model, batch, 8, stop, pad, shared) == _generate(model, batch, 8, stop, pad)
        kv = kv or shared.kv
        assert shared.kv is kv  # computed by the first batch only


def test_greedy_answers_equal_generate(model, tiny_tokenizer):
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    got = greedy_answers(model, tiny_tokenizer, conversations, 8, 2, "t")
    prompts = [prompt_ids(tiny_tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    want = [""] * len(prompts)
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    for s in range(0, len(order), 2):
        idx = order[s : s + 2]
        answers = _generate(model, [prompts[i] for i in idx], 8, stop, pad)
        for i, toks in zip(idx, answers):
            want[i] = tiny_tokenizer.decode(toks, skip_special_tokens=True).strip()
    assert got == want and len(set(want)) == len(want)


def test_lora_wrapped_model(tiny_model_dir, prompts, tiny_tokenizer):
    """The tuned model in eval is a PeftModel: the decoder under it must still run the adapter."""
    from peft import LoraConfig, get_peft_model

    base = _sharpen(load_model(tiny_model_dir))
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    plain = _generate(base, prompts, 10, stop, pad)
    targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B starts at zero, which would make the adapter a no-op
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    tuned.eval()
    assert gen._decoder_and_head(tuned) is not None  # the fast path, not the fallback
    want = _generate(tuned, prompts, 10, stop, pad)
    assert want != plain
    assert greedy_batch(tuned, prompts, 10, stop, pad) == want


def test_fallbacks_equal_generate(model, prompts, tiny_tokenizer, monkeypatch):
    """Models outside the fast paths (logits through `model(...)`, transformers' own cache, no prefix
    sharing) answer the same."""
    stop, pad = {tiny_tokenizer.eos_token_id}, tiny_tokenizer.pad_token_id
    want = _generate(model, prompts, 8, stop, pad)
    monkeypatch.setattr(gen, "output_layer", lambda m: None)  # a family whose logits tunekit cannot reproduce
    assert gen._decoder_and_head(model) is None
    assert greedy_batch(model, prompts, 8, stop, pad) == want
    monkeypatch.setattr(gen, "plain_layer_count", lambda m: 0)
    assert greedy_batch(model, prompts, 8, stop, pad) == want


def test_chunked_argmax_ties_go_to_the_lowest_index():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = torch.zeros(200, 2)
    w[70] = w[150] = torch.tensor([1.0, 0.0])  # row 0: tie across chunks (64 wide)
    w[65] = w[66] = torch.tensor([0.0, 2.0])  # row 1: tie within a chunk
    w[199] = torch.tensor([1.0, 1.5])  # row 2: maximum in the last, partial chunk (row 0: a third tie)
    got = gen._chunked_argmax(h, _layer(w, None))
    assert got.tolist() == [70, 65, 199] == (h @ w.T).argmax(-1).tolist()
    bias = torch.zeros(200)
    bias[3] = 10.0
    assert gen._chunked_argmax(h, _layer(w, bias)).tolist() == [3, 3, 3]


def test_chunked_argmax_applies_the_family_post_processing():
    """A soft-cap saturates: two logits far above the cap become equal in fp32, and then the lower
    index wins, as argmax over the model's own (capped) logits gives."""
    h = torch.tensor([[1.0]])
    w = torch.zeros(200, 1)
    w[10], w[150] = 1e4, 2e4  # raw argmax: 150; capped at 1, both are tanh(huge) = 1.0
    capped = gen._chunked_argmax(h, _layer(w, None, Post(softcap=1.0)))
    assert capped.tolist() == [10] == Post(softcap=1.0).after(h @ w.T).argmax(-1).tolist()
    assert gen._chunked_argmax(h, _layer(w, None)).tolist() == [150]
    scaled = _layer(w, None, Post(scale_in=2.0, scale_out=-1.0))  # a negative scale reverses the order
    assert gen._chunked_argmax(h, scaled).tolist() == scaled(h).argmax(-1).tolist() == [0]


def _layer(w: torch.Tensor, bias: torch.Tensor | None, post: Post = Post()) -> OutputLayer:
    head = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(w)
        if bias is not None:
            head.bias.copy_(bias)
    return OutputLayer(head, post)
