"""model.chat_template: the model's own, a named template, or a Jinja file; a base model gets `base`."""

from __future__ import annotations

import pytest

from tiny import build_tokenizer
from tunekit.data.template import IGNORE, prompt_ids, render, tokenize_chat
from tunekit.errors import ConfigError
from tunekit.data.chat_templates import DEFAULT_FOR_BASE, NAMED, apply_template

CONVERSATION = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Where do I rotate an API key?"},
    {"role": "assistant", "content": "Settings > Security > API keys."},
    {"role": "user", "content": "And the refund window?"},
    {"role": "assistant", "content": "It is 30 days."},
]


def _bare_tokenizer(extra: tuple[str, ...] = ()):
    """The tiny tokenizer as a base checkpoint ships it: no chat template; `extra` special tokens."""
    tok = build_tokenizer()
    tok.chat_template = None
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    return tok


def _supervised_text(tok, messages) -> list[str]:
    t = tokenize_chat(tok, messages)
    runs, cur = [], []
    for i, lab in zip(t.input_ids, t.labels):
        if lab != IGNORE:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    return runs + ([tok.decode(cur)] if cur else [])


@pytest.mark.parametrize("name", sorted(NAMED))
def test_every_named_template_masks_exactly_the_answers_and_their_end(name):
    tok = _bare_tokenizer(NAMED[name].markers)
    assert apply_template(tok, name) == name
    end = NAMED[name].end_of_turn or tok.eos_token
    assert tok.eos_token == end  # generation stops where training taught answers to end
    assert _supervised_text(tok, CONVERSATION) == [f"Settings > Security > API keys.{end}", f"It is 30 days.{end}"]
    # The prompt for the next answer is the training text up to that answer.
    text = render(tok, CONVERSATION)
    prompt = render(tok, CONVERSATION[:2], add_generation_prompt=True)
    assert text.startswith(prompt) and text[len(prompt):].startswith("Settings")
    ids = prompt_ids(tok, CONVERSATION[:2])
    assert tokenize_chat(tok, CONVERSATION[:3]).input_ids[: len(ids)] == ids


def test_auto_keeps_the_models_own_template_and_gives_a_base_model_the_default():
    own = build_tokenizer()
    before = own.chat_template
    assert apply_template(own, "auto") == "own" and own.chat_template == before
    bare = _bare_tokenizer()
    assert apply_template(bare, "auto") == DEFAULT_FOR_BASE
    assert render(bare, CONVERSATION[1:3]) == ("### User:\nWhere do I rotate an API key?\n\n"
                                              "### Assistant:\nSettings > Security > API keys.<|im_end|>\n\n")


def test_a_template_whose_tokens_the_vocabulary_lacks_is_refused_with_the_way_out():
    with pytest.raises(ConfigError, match=r"<\|start_header_id\|>.*model.chat_template: base"):
        apply_template(_bare_tokenizer(), "llama3")


def test_a_jinja_file_and_a_wrong_setting(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}[assistant] {% endif %}")
    tok = _bare_tokenizer()
    assert apply_template(tok, str(f)) == str(f)
    assert render(tok, CONVERSATION[1:2], add_generation_prompt=True) == "[user] Where do I rotate an API key?\n[assistant] "
    with pytest.raises(ConfigError, match="neither one of auto, chatml"):
        apply_template(_bare_tokenizer(), str(tmp_path / "missing.jinja"))
