"""A base model without a chat template (a tiny Gemma 3) trains, evaluates and exports with
`model.chat_template: auto`; the run says which template it used, writes it into its config.yaml,
and eval, chat, the exported adapter and the merged model all format prompts identically."""

from __future__ import annotations

import yaml

from families import build_family
from helpers import cli_on_tiny
from tiny import build_tokenizer
from tunekit.data.chat_templates import NAMED
from tunekit.data.template import prompt_ids, render
from tunekit.models.loading import load_tokenizer
from tunekit.models.tuned import resolve_target

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where do I rotate an API key?"}]


def _base_checkpoint(folder):
    tok = build_tokenizer()
    tok.chat_template = None  # as base checkpoints ship
    model = build_family("gemma3", len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_base_model_gets_the_stated_default_everywhere(tmp_path, capsys):
    base = _base_checkpoint(tmp_path / "gemma3-base")
    code, _, runs, _ = cli_on_tiny(tmp_path, base, "run", export={"formats": ["adapter", "merged"]})
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert code == 0, out[-3000:]
    assert "chat template base" in " ".join(out.split())  # the run log says which template it used
    run = runs / "tiny"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["chat_template"] == "base"
    assert (run / "eval" / "scores.json").is_file()

    want = render(load_tokenizer(base, "base"), QUESTION, add_generation_prompt=True)
    assert want.endswith("### Assistant:\n")
    ids = prompt_ids(load_tokenizer(base, "base"), QUESTION)
    for target in (resolve_target(str(run)), resolve_target(str(run / "export" / "adapter"), base=str(base))):
        tok = load_tokenizer(target.tokenizer, target.chat_template)  # what chat, generate and export load
        assert prompt_ids(tok, QUESTION) == ids
    merged = load_tokenizer(run / "export" / "merged")  # its own template now: the one the run used
    assert merged.chat_template == NAMED["base"].jinja and prompt_ids(merged, QUESTION) == ids
