"""The dashboard at `/` in headless Chromium (tests/browser.py), against a real `tunekit serve`:
it loads without console errors, a wrong key is refused, a job created through the API appears
with its loss curve, events, checkpoints and report, the try-it panel answers with both models
(as the API does), and a job can be created from an uploaded file."""

from __future__ import annotations

import json

import pytest
from api_server import heldout_file, train_file, wait_job
from browser import Tab


@pytest.fixture(scope="module")
def job(server, tiny_model_dir, tmp_path_factory):
    """A finished job with held-out items (so it has a report), created through the API."""
    tmp = tmp_path_factory.mktemp("dash")
    c = server.client(server.keys["alice"])
    train = c.files.create(file=train_file(tmp, 40).open("rb"), purpose="fine-tune")
    held = c.files.create(file=heldout_file(tmp, 4).open("rb"), purpose="fine-tune")
    created = c.fine_tuning.jobs.create(model=str(tiny_model_dir), training_file=train.id, validation_file=held.id,
                                        suffix="dash")
    done = wait_job(c, created.id, server=server)
    assert done.status == "succeeded", done.error
    return {"client": c, "job": done, "tmp": tmp}


def _home(server) -> str:
    return server.url.removesuffix("/v1") + "/"


def _sign_in(tab: Tab, key: str) -> None:
    tab.evaluate(f"document.getElementById('key').value = {json.dumps(key)}; "
                 "document.getElementById('signin-form').requestSubmit()")


def test_a_wrong_key_is_refused(server, browser):
    tab = Tab(browser, _home(server))
    _sign_in(tab, "tk-not-a-key")
    tab.wait_until("document.getElementById('signin-error').textContent.length > 0", "a refusal")
    assert "not valid" in tab.evaluate("document.getElementById('signin-error').textContent")
    assert tab.evaluate("document.getElementById('main').hidden") is True
    tab.close()


def test_a_job_shows_its_curve_events_checkpoints_report_and_try_it_answers(server, browser, job):
    j = job["job"]
    tab = Tab(browser, _home(server))
    _sign_in(tab, server.keys["alice"])
    tab.wait_until(f"document.querySelector('tr[data-id=\"{j.id}\"]') !== null", "the job in the jobs table")
    tab.evaluate(f"document.querySelector('tr[data-id=\"{j.id}\"]').click()")
    tab.wait_until("Number(document.getElementById('curve').dataset.points || 0) > 0", "the loss curve")
    tab.wait_until("document.getElementById('report').textContent.startsWith('#')", "the report")
    assert tab.evaluate("document.getElementById('job-status').textContent") == "succeeded"
    assert tab.evaluate("document.getElementById('events').children.length") > 0
    checkpoints = tab.evaluate("document.getElementById('checkpoints').innerText")
    assert f"{j.fine_tuned_model}:ckpt-step-" in checkpoints
    # The curve's points are the job's metrics events: one train loss per step, held-out losses too.
    steps = [e for e in job["client"].fine_tuning.jobs.list_events(j.id, limit=1000).data if e.type == "metrics"]
    assert tab.evaluate("Number(document.getElementById('curve').dataset.points)") >= len(steps)

    tab.wait_until(f"[...document.getElementById('tuned-model').options].some(o => o.value === {json.dumps(j.fine_tuned_model)})",
                   "the tuned model in the try-it list")
    question = "How do I reset my password?"
    tab.evaluate(f"document.getElementById('tuned-model').value = {json.dumps(j.fine_tuned_model)}; "
                 f"document.getElementById('question').value = {json.dumps(question)}; "
                 "document.getElementById('try-form').requestSubmit()")
    # Submitting writes '…' in both at once; each is replaced by its answer (a tiny model's may be empty).
    done = "['base-answer', 'tuned-answer'].every(id => document.getElementById(id).textContent !== '…')"
    tab.wait_until(done, "both answers")
    shown = {side: tab.evaluate(f"document.getElementById('{side}-answer').textContent") for side in ("base", "tuned")}
    for side, model in (("base", j.model), ("tuned", j.fine_tuned_model)):
        reply = job["client"].chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                      temperature=0, max_tokens=128)
        assert shown[side] == reply.choices[0].message.content, side
    tab.close()
    assert tab.errors() == []


def test_a_job_is_created_from_an_uploaded_file(server, browser, job, tiny_model_dir):
    tab = Tab(browser, _home(server))
    _sign_in(tab, server.keys["alice"])
    tab.wait_until(f"[...document.getElementById('base-model').options].some(o => o.value === {json.dumps(str(tiny_model_dir))})",
                   "the base model in the list")
    path = train_file(job["tmp"], 12, "from-dashboard.jsonl")
    input_el = browser.send("Runtime.evaluate", {"expression": "document.getElementById('train-file')"}, session=tab.session)
    browser.send("DOM.setFileInputFiles", {"files": [str(path)], "objectId": input_el["result"]["objectId"]}, session=tab.session)
    tab.evaluate(f"document.getElementById('base-model').value = {json.dumps(str(tiny_model_dir))}; "
                 "document.getElementById('epochs').value = '1'; document.getElementById('create-form').requestSubmit()")
    tab.wait_until("document.getElementById('create-status').textContent.startsWith('created ')", "the new job")
    new_id = tab.evaluate("document.getElementById('create-status').textContent").split()[-1]
    created = job["client"].fine_tuning.jobs.retrieve(new_id)
    assert created.model == str(tiny_model_dir) and created.hyperparameters.n_epochs == 1
    assert job["client"].files.retrieve(created.training_file).filename == "from-dashboard.jsonl"
    job["client"].fine_tuning.jobs.cancel(new_id)  # the module's server stops with the test
    tab.close()
    assert tab.errors() == []
