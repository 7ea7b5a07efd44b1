"""Who may call what: keys (401), owners (404), the upload limit (413); `tunekit keys`."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request

import openai
import pytest
from api_server import make_key, wait_job

ENVELOPE = {"message", "type", "param", "code"}


def _raw(server, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, dict]:
    req = urllib.request.Request(f"{server.url}{path}", method=method, headers=headers or {},
                                 data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_a_missing_or_wrong_key_gets_401_in_openais_envelope(server):
    for headers in ({}, {"Authorization": "Bearer tk-not-a-key"}, {"Authorization": "Basic abc"}):
        for method, path in (("GET", "/models"), ("GET", "/files"), ("GET", "/fine_tuning/jobs"),
                             ("POST", "/fine_tuning/jobs"), ("GET", "/fine_tuning/jobs/ftjob-x/events")):
            status, sent, body = _raw(server, path, method, headers)
            assert status == 401, (headers, path, body)
            assert set(body["error"]) == ENVELOPE and body["error"]["type"] == "authentication_error"
            if method == "POST":
                assert sent.get("x-should-retry") == "false"
    with pytest.raises(openai.AuthenticationError) as e:
        server.client("tk-wrong").fine_tuning.jobs.list()
    assert e.value.code == "invalid_api_key" and "tunekit keys" in e.value.message
    assert server.client(server.keys["alice"]).models.list().object == "list"


def test_a_revoked_key_is_refused(server):
    from tunekit.serve import keys

    key = make_key(server.home, "carol-laptop", owner="carol")
    c = server.client(key)
    assert c.files.list().data == []
    keys.revoke(server.root, "carol-laptop")
    with pytest.raises(openai.AuthenticationError):
        c.files.list()


def test_another_owners_files_and_jobs_answer_404(server, tiny_model_dir, tmp_path):
    alice, bob = server.client(server.keys["alice"]), server.client(server.keys["bob"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")  # fails at validation: no training needed to have a job
    f = alice.files.create(file=bad.open("rb"), purpose="fine-tune")
    job = wait_job(alice, alice.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=f.id).id, server=server)
    assert job.status == "failed"
    calls = [lambda: bob.files.retrieve(f.id), lambda: bob.files.content(f.id), lambda: bob.files.delete(f.id),
             lambda: bob.fine_tuning.jobs.retrieve(job.id), lambda: bob.fine_tuning.jobs.cancel(job.id),
             lambda: bob.fine_tuning.jobs.pause(job.id), lambda: bob.fine_tuning.jobs.list_events(job.id),
             lambda: bob.fine_tuning.jobs.checkpoints.list(job.id),
             lambda: bob.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=f.id)]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert set(e.value.body) == ENVELOPE
    assert f.id not in [x.id for x in bob.files.list()] and job.id not in [j.id for j in bob.fine_tuning.jobs.list()]
    assert alice.files.retrieve(f.id).id == f.id and alice.fine_tuning.jobs.retrieve(job.id).status == "failed"


def test_an_upload_over_the_limit_gets_413_and_keeps_nothing(server, tmp_path):
    c = server.client(server.keys["bob"])
    before = sorted(p.name for p in (server.root / "files").iterdir())
    big = tmp_path / "big.jsonl"
    line = json.dumps({"messages": [{"role": "user", "content": "x" * 900}, {"role": "assistant", "content": "y"}]})
    big.write_text((line + "\n") * 1300)  # ~1.2 MB; the server takes 1 MB
    with pytest.raises(openai.APIStatusError) as e:
        c.files.create(file=big.open("rb"), purpose="fine-tune")
    assert e.value.status_code == 413 and e.value.code == "file_too_large" and "--max-upload-mb" in e.value.message
    assert e.value.response.headers["x-should-retry"] == "false"
    assert sorted(p.name for p in (server.root / "files").iterdir()) == before
    small = tmp_path / "small.jsonl"
    small.write_text((line + "\n") * 900)  # ~0.8 MB: under the limit
    assert c.files.create(file=small.open("rb"), purpose="fine-tune").status == "processed"


def test_keys_cli_prints_the_key_alone_on_its_last_line_and_keeps_only_its_hash(tmp_path, monkeypatch, capsys):
    from tunekit.cli import main
    from tunekit.serve import keys, store

    monkeypatch.setenv("TUNEKIT_HOME", str(tmp_path / "home"))
    assert main(["keys", "create", "dana"]) == 0
    key = capsys.readouterr().out.splitlines()[-1]
    assert key.startswith("tk-") and len(key) > 40 and " " not in key
    root = store.serve_home()
    with store.connect(root) as db:
        assert keys.owner_of(db, key) == "dana" and keys.owner_of(db, key + "x") is None
        stored = [tuple(r) for r in db.execute("SELECT * FROM keys")]
    assert key not in repr(stored) and keys.hash_key(key) in repr(stored)
    for f in root.glob("tunekit.db*"):
        assert key.encode() not in f.read_bytes()
    assert main(["keys", "create", "dana"]) == 2  # a live key of that name exists
    assert "revoke it first" in capsys.readouterr().err
    assert main(["keys", "create", "dana-ci", "--owner", "dana"]) == 0
    second = capsys.readouterr().out.splitlines()[-1]
    with store.connect(root) as db:
        assert keys.owner_of(db, second) == "dana"  # a second key of the same owner
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "dana\towner dana" in listed and "dana-ci\towner dana" in listed and "tk-" not in listed
    assert main(["keys", "revoke", "dana"]) == 0
    with store.connect(root) as db:
        assert keys.owner_of(db, key) is None
    assert main(["keys", "list"]) == 0 and "revoked" in capsys.readouterr().out
    assert main(["keys", "revoke", "nobody"]) == 2
    with pytest.raises(sqlite3.Error):  # the schema has no column for a key in clear
        with store.connect(root) as db:
            db.execute("SELECT key FROM keys")
