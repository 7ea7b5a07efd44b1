"""Export of a trained run in every format, each verified: the adapter loads in peft unchanged,
the merged folder in transformers alone, the GGUF in transformers' GGUF loader, all giving the
logits and greedy answers of the model that was trained; and the CLI's choices and errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from helpers import tiny_run_config
from tunekit import pipeline
from tunekit.cli import main
from tunekit.config import Config
from tunekit.data.template import prompt_ids
from tunekit.errors import ConfigError
from tunekit.models.loading import load_model, load_tokenizer
from tunekit.train.checkpoint import final_checkpoint

FORMATS = ["adapter", "merged", "gguf", "ollama"]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    raw = tiny_run_config(tmp, tiny_model_dir, 30, n_eval=4, export={"formats": FORMATS, "check_answers": 3})
    raw["train"]["lr"] = 5e-2  # big enough that the adapter visibly changes the logits
    cfg = Config.model_validate(raw)
    run_dir = tmp / "runs" / cfg.name
    for stage in ("prepare", "train", "export"):
        pipeline.run_stage(cfg, run_dir, stage)
    return cfg, run_dir, json.loads((run_dir / "export" / "export.json").read_text())


def _logits(model, tok):
    ids = torch.tensor([prompt_ids(tok, [{"role": "user", "content": "How much is Crest?"}])])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_export_loads_in_peft_with_identical_logits(exported, tiny_model_dir):
    from peft import PeftModel

    _, run_dir, report = exported
    tok = load_tokenizer(tiny_model_dir)
    out = run_dir / "export" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in out.iterdir()}
    from_export = PeftModel.from_pretrained(load_model(tiny_model_dir), str(out)).eval()
    from_ckpt = PeftModel.from_pretrained(load_model(tiny_model_dir), str(final_checkpoint(run_dir))).eval()
    assert torch.equal(_logits(from_export, tok), _logits(from_ckpt, tok))
    assert not torch.allclose(_logits(from_export, tok), _logits(load_model(tiny_model_dir).eval(), tok), atol=1e-4)
    assert report["adapter"]["max_logit_gap"] == 0.0 and report["adapter"]["tensors"] > 0


def test_merged_export_loads_with_transformers_alone(exported, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, run_dir, report = exported
    out = run_dir / "export" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    adapter = PeftModel.from_pretrained(load_model(tiny_model_dir), str(final_checkpoint(run_dir))).eval()
    assert torch.allclose(_logits(merged, tok), _logits(adapter, tok), atol=1e-4)
    assert report["merged"]["dtype"] == "float32"  # auto: the tiny base is fp32
    assert report["merged"]["relative_gap"] < report["merged"]["tolerance"]
    assert report["merged"]["answers"] == {"identical_answers": 3, "questions": 3, "differing": []}


def test_gguf_export_reads_back_with_the_adapter_models_answers(exported):
    _, run_dir, report = exported
    g = report["gguf"]
    assert (run_dir / "export" / "model.gguf").is_file()
    assert g["max_logit_gap"] <= g["tolerance"]
    assert g["answers"]["questions"] == 3 and g["answers"]["identical_answers"] == 3


def test_ollama_modelfile_points_at_the_gguf(exported):
    _, run_dir, report = exported
    text = (run_dir / "export" / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert report["ollama"]["conversations_checked"] == 4


def test_export_without_formats_is_a_config_error(exported):
    cfg, run_dir, _ = exported
    with pytest.raises(ConfigError, match="export.formats"):
        pipeline.run_stage(cfg.model_copy(update={"export": cfg.export.model_copy(update={"formats": []})}), run_dir, "export", force=True)


def test_cli_exports_a_run_by_folder_with_a_chosen_dtype(exported, tmp_path, capsys):
    from safetensors import safe_open

    _, run_dir, _ = exported
    out = tmp_path / "bf16"
    assert main(["export", str(run_dir), "--format", "merged", "--dtype", "bfloat16", "--out", str(out), "--check-answers", "0"]) == 0
    with safe_open(str(out / "merged" / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    figures = json.loads((out / "export.json").read_text())["merged"]
    assert figures["dtype"] == "bfloat16" and 0 < figures["relative_gap"] < figures["tolerance"]
    assert "export done" in capsys.readouterr().out


def test_cli_exports_an_adapter_folder_given_an_output(exported, tmp_path):
    _, run_dir, _ = exported
    out = tmp_path / "from-adapter"
    assert main(["export", str(run_dir / "export" / "adapter"), "--format", "adapter", "--out", str(out)]) == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx"], "unknown export format 'onnx'"),
    (["train.lr=1", "--format", "adapter"], "overrides apply to a config YAML"),
])
def test_cli_errors_name_the_problem(exported, capsys, args, message):
    _, run_dir, _ = exported
    assert main(["export", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_needs_an_output_folder_for_an_adapter(exported, capsys):
    _, run_dir, _ = exported
    assert main(["export", str(run_dir / "export" / "adapter"), "--format", "merged"]) == 2
    assert "give --out FOLDER" in capsys.readouterr().err


def test_an_export_that_fails_its_check_leaves_no_file(exported, tmp_path, monkeypatch):
    from tunekit.errors import CheckpointError
    from tunekit.export import gguf, merge
    from tunekit.export.run import export_target
    from tunekit.models.tuned import resolve_target

    _, run_dir, _ = exported
    target = resolve_target(str(run_dir))
    monkeypatch.setitem(merge.TOLERANCE, "bfloat16", 0.0)
    with pytest.raises(CheckpointError, match="not writing"):
        export_target(target, ["merged"], tmp_path, dtype="bfloat16", check_answers=0)
    monkeypatch.setitem(gguf.TOLERANCES, "f16", (0.0, 0.0))
    with pytest.raises(CheckpointError, match="do not ship it"):
        export_target(target, ["gguf"], tmp_path, check_answers=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no merged/, no model.gguf, no scratch, no export.json


def test_files_of_an_earlier_export_are_named_stale(exported, tmp_path):
    from tunekit.export.run import export_target
    from tunekit.models.tuned import resolve_target

    _, run_dir, _ = exported
    (tmp_path / "model.gguf").write_bytes(b"GGUF from an older model")
    report = export_target(resolve_target(str(run_dir)), ["adapter"], tmp_path, check_answers=0)
    assert report["stale"] == ["model.gguf"]
    assert json.loads((tmp_path / "export.json").read_text())["formats"] == ["adapter"]


def test_an_exported_adapter_names_the_hub_base_of_a_registry_model(tmp_path):
    from tunekit.export.adapter import portable_base
    from tunekit.models.tuned import Target

    (tmp_path / "config.yaml").write_text("model: {base: smollm2-135m-instruct}\n")
    target = Target(model=tmp_path, tokenizer=tmp_path, adapter=tmp_path, run_dir=tmp_path)
    assert portable_base(target) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "config.yaml").write_text(f"model: {{base: {tmp_path}}}\n")
    assert portable_base(target) is None  # a local folder: keep what training recorded


def test_exported_files_are_readable_by_others(exported):
    _, run_dir, _ = exported
    umask = os.umask(0)
    os.umask(umask)
    files = [f for f in (run_dir / "export").rglob("*") if f.is_file()]
    assert files and all(f.stat().st_mode & 0o777 == 0o666 & ~umask for f in files)  # not safetensors' 0600


def test_export_estimate_is_the_size_written_and_a_full_disk_refuses_before_any_work(exported, tmp_path, monkeypatch):
    from tunekit import atomic
    from tunekit.errors import DiskFull
    from tunekit.export import run as export_run
    from tunekit.models.tuned import resolve_target

    _, run_dir, _ = exported
    target = resolve_target(str(run_dir))
    out = run_dir / "export"
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    need = export_run.export_bytes(target, ["adapter", "merged", "gguf"], "auto", "f16")
    assert written <= need <= 3 * written  # the GGUF's fp32 scratch source is the margin

    merges = []
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 10 * 2**20)
    monkeypatch.setattr("tunekit.export.merge.merged_fp32", lambda *a, **k: merges.append(1))
    with pytest.raises(DiskFull) as err:
        export_run.export_target(target, ["merged"], tmp_path / "out")
    assert "10 MB free" in str(err.value) and "exporting merged" in str(err.value)
    assert not merges and not (tmp_path / "out").exists()
