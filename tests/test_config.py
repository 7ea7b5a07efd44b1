"""Config: unknown keys and bad values name the key; overrides; every default dumped."""

from __future__ import annotations

import pytest
import yaml

from tunekit.config import Config, dump_config, load_config, parse_override
from tunekit.errors import ConfigError


def _write(tmp_path, raw: dict):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def _error(tmp_path, raw: dict, overrides=()) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, raw), list(overrides))
    return str(e.value)


def test_unknown_top_level_key_suggests_section(tmp_path):
    msg = _error(tmp_path, {"data": {"train": "x.jsonl"}, "trian": {"lr": 1e-3}})
    assert "trian" in msg
    assert "did you mean 'train'" in msg


def test_unknown_nested_key_names_path_and_suggests(tmp_path):
    msg = _error(tmp_path, {"data": {"train": "x.jsonl"}, "train": {"lrr": 1e-3}})
    assert "train.lrr" in msg
    assert "did you mean 'train.lr'" in msg


def test_unknown_key_through_override(tmp_path):
    msg = _error(tmp_path, {"data": {"train": "x.jsonl"}}, ["method.rr=4"])
    assert "method.rr" in msg and "did you mean 'method.r'" in msg


@pytest.mark.parametrize("section,key,value", [("train", "lr", -1), ("method", "r", 0), ("train", "batch_size", 0),
                                               ("data", "valid_fraction", 0.7), ("method", "layers", "top:3")])
def test_bad_value_names_key(tmp_path, section, key, value):
    raw = {"data": {"train": "x.jsonl"}}
    raw.setdefault(section, {})[key] = value
    msg = _error(tmp_path, raw)
    assert f"{section}.{key}" in msg
    assert repr(value) in msg  # says what it got


def test_missing_train_data_is_an_error(tmp_path):
    msg = _error(tmp_path, {"model": {"dtype": "float32"}})
    assert "data" in msg and "required" in msg
    msg = _error(tmp_path, {"data": {"eval": "h.jsonl"}})
    assert "data.train" in msg and "required" in msg


@pytest.mark.parametrize("text,path,value", [
    ("train.lr=0.001", ["train", "lr"], 0.001),
    ("train.lr=1e-4", ["train", "lr"], 1e-4),  # YAML 1.1 alone would give the string "1e-4"
    ("data.dedup=false", ["data", "dedup"], False),
    ("train.batch_size=4", ["train", "batch_size"], 4),
    ("method.target_modules=[q_proj, v_proj]", ["method", "target_modules"], ["q_proj", "v_proj"]),
    ("method.layers=last:2", ["method", "layers"], "last:2"),
    ("data.eval=null", ["data", "eval"], None),
    ("name=my-run", ["name"], "my-run"),
])
def test_parse_override_reads_yaml_scalars(text, path, value):
    assert parse_override(text) == (path, value)


def test_overrides_apply_and_validate(tmp_path):
    cfg = load_config(_write(tmp_path, {"data": {"train": "x.jsonl"}}),
                      ["train.lr=1e-4", "data.dedup=false", "method.target_modules=[q_proj, v_proj]", "eval.contenders=[base]"])
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.data.dedup is False
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    assert cfg.eval.contenders == ["base"]
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(_write(tmp_path, {"data": {"train": "x.jsonl"}}), ["train.lr"])


def _all_fields(model_cls, prefix=""):
    from pydantic import BaseModel

    for name, field in model_cls.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _all_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:  # an empty mapping (data.columns) is a value
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_dump_config_writes_every_default_and_round_trips(tmp_path):
    cfg = load_config(_write(tmp_path, {"data": {"train": "x.jsonl"}}))
    text = dump_config(cfg)
    dumped = yaml.safe_load(text)
    assert set(_flatten(dumped)) == set(_all_fields(Config))
    assert dumped["train"]["lr"] == 2e-4 and dumped["method"]["kind"] == "lora" and dumped["data"]["eval"] is None
    again = load_config(_write(tmp_path, dumped))
    assert again == cfg


def test_relative_data_path_resolves_against_config_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.jsonl").write_text("")
    cfg = load_config(_write(tmp_path, {"data": {"train": "d/t.jsonl"}}))
    assert cfg.data.train == str((tmp_path / "d" / "t.jsonl").resolve())


# --- Overrides a user can mistype: exit 2 with a message, never a traceback ---------------------
# Found by tests/data/test_properties.py (random key=value pairs).

@pytest.mark.parametrize("override, says", [
    ("model.base=[", "not valid YAML"),
    ("model.base='", "not valid YAML"),
    ("model.base=@x", "not valid YAML"),
    ("model.base=\x1b", "not valid YAML"),
    ("model.base=" + "[" * 3000, "not valid YAML"),
    ("train.epochs=1e309", "finite number"),
    ("train.lr=.nan", "finite number"),
    ("data.mix=[{path: a.jsonl, weight: .inf}]", "finite number"),
    ("seed=-1", "seed"),
    ("seed=99999999999999999999999", "seed"),
])
def test_override_a_user_can_mistype_is_a_config_error(tmp_path, override, says):
    assert says in _error(tmp_path, {"data": {"train": "x.jsonl"}}, [override])


@pytest.mark.parametrize("key", ["data.train", "data.eval", "train.replay.file", "model.chat_template"])
def test_path_too_long_for_the_file_system_is_not_a_traceback(tmp_path, key):
    # A relative path is looked up beside the config; one longer than the OS allows raised OSError.
    cfg = load_config(_write(tmp_path, {"data": {"train": "x.jsonl"}}), [f"{key}={'a/' * 3000}x"])
    section, _, field = key.rpartition(".")
    node = cfg
    for part in section.split("."):
        node = getattr(node, part)
    assert getattr(node, field).startswith("a/a/")


def test_config_file_that_is_not_utf8_or_too_deep(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_bytes(b"data:\n  train: \xff\xfe.jsonl\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)
    p.write_text("data: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
