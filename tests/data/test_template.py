"""Chat template and loss mask on the tiny tokenizer (ChatML, like SmolLM2)."""

from __future__ import annotations

from tunekit.data.template import IGNORE, prompt_ids, render, tokenize_chat


def _supervised_runs(tok) -> list[list[int]]:
    runs, cur = [], []
    for t in tok.labels:
        if t != IGNORE:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def test_labels_are_input_ids_or_ignore(tiny_tokenizer):
    msgs = [{"role": "user", "content": "What does error RW-4031 mean?"},
            {"role": "assistant", "content": "It means the webhook signature did not match."}]
    t = tokenize_chat(tiny_tokenizer, msgs)
    assert len(t.labels) == len(t.input_ids)
    assert all(lab in (IGNORE, i) for lab, i in zip(t.labels, t.input_ids))
    assert t.input_ids == tiny_tokenizer(render(tiny_tokenizer, msgs), add_special_tokens=False)["input_ids"]


def test_supervised_tokens_are_each_answer_and_its_end_of_turn(tiny_tokenizer):
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "How much does the Crest plan cost per seat?"},
            {"role": "assistant", "content": "The Crest plan costs $43 per seat per month."},
            {"role": "user", "content": "Where do I rotate an API key?"},
            {"role": "assistant", "content": "Go to Settings > Security > API keys and click Rotate."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "Hello! Thanks, that helps a lot."}]
    t = tokenize_chat(tiny_tokenizer, msgs)
    texts = [tiny_tokenizer.decode(run, skip_special_tokens=False) for run in _supervised_runs(t)]
    answers = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert texts == [a + "<|im_end|>" for a in answers]
    end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert t.supervised == sum(len(tiny_tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)
    # The newline after <|im_end|> and the user/system text carry no loss.
    for j, (i, lab) in enumerate(zip(t.input_ids, t.labels)):
        if i == end and lab != IGNORE and j + 1 < len(t.labels):
            assert t.labels[j + 1] == IGNORE


def test_default_system_prompt_is_not_supervised(tiny_tokenizer):
    msgs = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}]
    t = tokenize_chat(tiny_tokenizer, msgs)
    texts = [tiny_tokenizer.decode(run, skip_special_tokens=False) for run in _supervised_runs(t)]
    assert texts == ["Hi.<|im_end|>"]


def test_no_doubled_bos(tiny_tokenizer):
    msgs = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}]
    t = tokenize_chat(tiny_tokenizer, msgs)
    bos = tiny_tokenizer.bos_token_id
    assert t.input_ids[0] == bos and t.input_ids[1] != bos
    # One <|im_start|> per rendered turn (default system + user + assistant), no extra.
    assert t.input_ids.count(bos) == 3
    assert tiny_tokenizer.decode(t.input_ids, skip_special_tokens=False) == render(tiny_tokenizer, msgs)


def test_prompt_ids_end_with_generation_prompt(tiny_tokenizer):
    msgs = [{"role": "user", "content": "What is the refund window?"}]
    ids = prompt_ids(tiny_tokenizer, msgs)
    gen = tiny_tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(gen):] == gen
    text = tiny_tokenizer.decode(ids, skip_special_tokens=False)
    assert text.endswith("What is the refund window?<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(tiny_tokenizer.bos_token_id) == 3
