"""The Ollama Modelfile: its TEMPLATE renders what the chat template renders, for the template
families tunekit knows (SmolLM2 / ChatML, Llama 3, Qwen2.5), with the default system prompt
as SYSTEM and the turn tokens as stops; a template it cannot express is refused."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tiny import build_tokenizer, template_tokenizer
from tunekit.data.template import render
from tunekit.errors import CheckpointError
from tunekit.export.ollama import (
    CHECK_CONVERSATIONS,
    check_pieces,
    export_ollama,
    go_template,
    replay,
    template_pieces,
)

from data.test_template import FAMILIES, family_tokenizer  # the three template families

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How much is Crest?"},
                {"role": "assistant", "content": "$43 per seat."}, {"role": "user", "content": "And Meridian?"}]


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param, family_tokenizer(request.param)


def test_the_pieces_replay_the_chat_template(family):
    _, tok = family
    p = template_pieces(tok)
    assert check_pieces(p, tok) == len(CHECK_CONVERSATIONS)
    assert p.bos + replay(p, CONVERSATION) == render(tok, CONVERSATION, add_generation_prompt=True)


def test_each_family_gets_its_default_system_prompt_bos_and_trimming(family):
    name, tok = family
    p = template_pieces(tok)
    assert p.default_system == {"smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                                "qwen2": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
                                "llama3": None}[name]
    # Llama 3's tokenizer adds <|begin_of_text|> itself, so llama.cpp would too: the template must not repeat it.
    assert p.bos == ("<|begin_of_text|>" if name == "llama3" else "")
    assert p.trims == (name == "llama3")  # its template strips contents


def test_modelfile_has_from_template_system_and_stops(tmp_path, tiny_model_dir):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    figures = export_ollama(tmp_path, tmp_path / "model.gguf", build_tokenizer(), 512, "Support-Demo")
    text = (tmp_path / "Modelfile").read_text()
    assert "FROM ./model.gguf\n" in text and "ollama create support-demo -f Modelfile" in text
    assert 'SYSTEM """You are a helpful assistant."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|im_start|>"' in text
    assert "PARAMETER num_ctx 512" in text
    template = text.split('TEMPLATE """')[1].split('"""')[0]
    assert template == go_template(template_pieces(build_tokenizer()))
    assert template.count("{{ if") + template.count("{{- if") == template.count("{{ end }}") + template.count("{{- end }}") - 1
    assert figures["stop"] == ["<|im_end|>", "<|im_start|>"] and figures["conversations_checked"] == 4


def test_a_template_that_is_not_plain_role_blocks_is_refused(tmp_path):
    numbered = ("{% for m in messages %}<|im_start|>{{ m['role'] }} #{{ loop.index }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = template_tokenizer(numbered, [], bos=None, eos="<|im_end|>")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="cannot be expressed as an Ollama template"):
        export_ollama(tmp_path, tmp_path / "model.gguf", tok, None, "x")
    assert not (tmp_path / "Modelfile").exists()


def test_the_gguf_must_be_beside_the_modelfile(tmp_path):
    with pytest.raises(CheckpointError, match="GGUF file beside it"):
        export_ollama(tmp_path, tmp_path / "model.gguf", build_tokenizer(), None, "x")


GO_RENDER = """package main
import ("encoding/json"; "os"; "text/template")
type Msg struct { Role string; Content string }
func main() {
  var in struct { Template string; System string; Messages []Msg }
  if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil { panic(err) }
  t := template.Must(template.New("t").Parse(in.Template))
  if err := t.Execute(os.Stdout, map[string]any{"System": in.System, "Messages": in.Messages}); err != nil { panic(err) }
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (apt install golang-go) to run text/template")
def test_go_text_template_renders_what_jinja_renders(family, tmp_path):
    """The real check, where Go is installed: Ollama's own template engine on the written template,
    called as Ollama calls it (system messages joined into .System, all messages in .Messages)."""
    _, tok = family
    (tmp_path / "main.go").write_text(GO_RENDER)
    (tmp_path / "go.mod").write_text("module render\ngo 1.19\n")
    subprocess.run(["go", "build", "-o", "render", "."], cwd=tmp_path, check=True, capture_output=True,
                   env={"HOME": str(tmp_path), "GOCACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin:/usr/local/go/bin"})
    p = template_pieces(tok)
    for conv in CHECK_CONVERSATIONS:
        conv = [{**m, "content": m["content"].strip()} for m in conv] if p.trims else conv
        system = "\n\n".join(m["content"] for m in conv if m["role"] == "system") or p.default_system or ""
        data = {"Template": go_template(p), "System": system,
                "Messages": [{"Role": m["role"], "Content": m["content"]} for m in conv]}
        got = subprocess.run([str(tmp_path / "render")], input=json.dumps(data), capture_output=True, text=True, check=True).stdout
        assert p.bos + got == render(tok, conv, add_generation_prompt=True)


@pytest.mark.parametrize("label, name", [("support-demo", "support-demo"), ("/tmp/x/Support Demo v2", "support-demo-v2"), ("///", "tuned")])
def test_the_suggested_ollama_name_is_one_ollama_accepts(label, name):
    from tunekit.export.ollama import ollama_name

    assert ollama_name(label) == name
