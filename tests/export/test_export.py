"""Export: the adapter loads in peft unchanged and the merged folder in transformers alone,
both giving the logits of the model that was trained."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_run_config
from tunekit import pipeline
from tunekit.config import Config
from tunekit.data.template import prompt_ids
from tunekit.errors import ConfigError
from tunekit.train.checkpoint import final_checkpoint
from tunekit.models.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    raw = tiny_run_config(tmp, tiny_model_dir, 30, export={"formats": ["adapter", "merged"]})
    raw["train"]["lr"] = 5e-2  # big enough that the adapter visibly changes the logits
    cfg = Config.model_validate(raw)
    run_dir = tmp / "runs" / cfg.name
    for stage in ("prepare", "train", "export"):
        pipeline.run_stage(cfg, run_dir, stage)
    return cfg, run_dir


def _logits(model, tok):
    ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": "How much is Crest?"}])])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_export_loads_in_peft_with_identical_logits(exported, tiny_model_dir):
    from peft import PeftModel

    _, run_dir = exported
    tok = load_tokenizer(tiny_model_dir)
    out = run_dir / "export" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    from_export = PeftModel.from_pretrained(load_model(tiny_model_dir), str(out)).eval()
    from_ckpt = PeftModel.from_pretrained(load_model(tiny_model_dir), str(final_checkpoint(run_dir))).eval()
    assert torch.equal(_logits(from_export, tok), _logits(from_ckpt, tok))
    assert not torch.allclose(_logits(from_export, tok), _logits(load_model(tiny_model_dir).eval(), tok), atol=1e-4)


def test_merged_export_loads_with_transformers_alone(exported, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run_dir = exported
    out = run_dir / "export" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    adapter = PeftModel.from_pretrained(load_model(tiny_model_dir), str(final_checkpoint(run_dir))).eval()
    assert torch.allclose(_logits(merged, tok), _logits(adapter, tok), atol=1e-4)
    report = json.loads((run_dir / "export" / "export.json").read_text())
    assert report["merged_max_logit_gap"] < 1e-3


def test_export_without_formats_is_a_config_error(exported):
    cfg, run_dir = exported
    with pytest.raises(ConfigError, match="export.formats"):
        pipeline.run_stage(cfg.model_copy(update={"export": cfg.export.model_copy(update={"formats": []})}), run_dir, "export", force=True)
