"""The families users bring, end to end on tiny random models: prepare, two training steps, eval
(with the decode loop), and the adapter and merged exports; GGUF where tunekit writes the
architecture, and otherwise a refusal that says what to do. The loss against each family's own
and the decode loop against `generate` are in tests/train/test_family_logits.py."""

from __future__ import annotations

import json

import pytest

from families import build_family
from helpers import cli_on_tiny, offline_env
from tiny import build_tokenizer
from tunekit.cli import main
from tunekit.export.gguf import SUPPORTED_ARCHS

MATRIX = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3", "granite")


@pytest.mark.parametrize("family", MATRIX)
def test_a_family_runs_from_prepare_to_export(family, tmp_path, capsys):
    folder = tmp_path / family
    tok = build_tokenizer()
    model = build_family(family, len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)

    # 40 conversations, 36 to train on at batch 18: two optimiser steps.
    code, _, runs, _ = cli_on_tiny(tmp_path, folder, "run", train={"batch_size": 18},
                                   export={"formats": ["adapter", "merged"], "check_answers": 2})
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    run = runs / "tiny"
    assert json.loads((run / "train_state.json").read_text())["steps"] == 2
    scores = json.loads((run / "eval" / "scores.json").read_text())
    assert set(scores["answer_words"]) == {"base", "few_shot", "tuned"}
    assert (run / "export" / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "export" / "merged" / "config.json").is_file()

    mp = offline_env(tmp_path)
    try:
        code = main(["export", str(run), "--format", "gguf", "--check-answers", "0"])
    finally:
        mp.undo()
    err = capsys.readouterr().err
    if family in SUPPORTED_ARCHS:
        assert code == 0, err[-3000:]
        assert (run / "export" / "model.gguf").is_file()
    else:
        assert code == 2
        assert "cannot be exported to GGUF" in " ".join(err.split()) and "'merged'" in err
