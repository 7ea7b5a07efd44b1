"""Chat completions (serve/completions.py): greedy answers equal `tunekit chat`'s, streamed chunks add up
to the answer, usage, stop strings, n and seed, and a 400 naming the field for each bad request."""

from __future__ import annotations

import io

import pytest
from serve_builders import USER, user

from tunekit.infer.load import open_model
from tunekit.infer.pool import EnginePool
from tunekit.infer.sampling import Sampling
from tunekit.models.tuned import resolve_target
from tunekit.serve.chat import ChatSession, chat_loop, lines_of
from tunekit.serve.completions import RequestError, complete, stream

NEW = 12


@pytest.fixture(scope="module")
def pool():
    made = EnginePool(window_s=0.005)
    yield made
    made.close()


@pytest.fixture
def served(pool, lively_dir, adapter_a):
    """name -> Served: the base, and adapter alpha on it (one engine for both)."""
    return {"base": pool.get(resolve_target(str(lively_dir)), "base"),
            "alpha": pool.get(resolve_target(str(adapter_a)), "alpha")}


def chat_answer(spec, text: str = USER) -> str:
    session = ChatSession(open_model(str(spec)), Sampling(max_new_tokens=NEW))
    chat_loop(session, lines_of([text]), io.StringIO())
    return session.turns[1]["content"]


def ask(**fields) -> dict:
    return {"model": "m", "messages": user(), "temperature": 0, "max_tokens": NEW, **fields}


def streamed(chunks) -> tuple[str, str | None]:
    text, finish = "", None
    for c in chunks:
        for choice in c["choices"]:
            text += choice["delta"].get("content") or ""
            finish = choice["finish_reason"] or finish
    return text, finish


@pytest.mark.parametrize("name", ["base", "alpha"])
def test_greedy_completion_equals_tunekit_chat(served, name, lively_dir, adapter_a):
    want = chat_answer(lively_dir if name == "base" else adapter_a)
    out = complete(served[name], ask())
    assert out["object"] == "chat.completion" and out["model"] == "m" and out["id"].startswith("chatcmpl-")
    [choice] = out["choices"]
    assert choice["message"] == {"role": "assistant", "content": want, "refusal": None}
    assert choice["finish_reason"] == "length"  # the lively model never writes its stop token in 12
    assert out["usage"] == {"prompt_tokens": out["usage"]["prompt_tokens"], "completion_tokens": NEW,
                            "total_tokens": out["usage"]["prompt_tokens"] + NEW}
    assert out["usage"]["prompt_tokens"] > 20


def test_adapters_change_the_answer(served):
    assert complete(served["base"], ask())["choices"][0]["message"]["content"] != \
        complete(served["alpha"], ask())["choices"][0]["message"]["content"]


def test_stream_chunks_add_up_to_the_completion(served):
    whole = complete(served["alpha"], ask())
    chunks = list(stream(served["alpha"], ask(stream=True, stream_options={"include_usage": True})))
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed(chunks) == (whole["choices"][0]["message"]["content"], "length")
    assert len(chunks) > 4  # in pieces, not one lump
    *rest, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in rest)
    plain = list(stream(served["alpha"], ask(stream=True)))
    assert "usage" not in plain[-1] and streamed(plain) == streamed(chunks)


def test_a_stop_string_ends_the_answer_before_it(served):
    full = complete(served["base"], ask(max_tokens=20))["choices"][0]["message"]["content"]
    stop = full[6:9]
    want = full[: full.find(stop)].strip()
    out = complete(served["base"], ask(max_tokens=20, stop=["never written", stop]))
    assert out["choices"][0]["message"]["content"] == want and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] < 20
    text, finish = streamed(stream(served["base"], ask(max_tokens=20, stop=stop, stream=True)))
    assert (text, finish) == (want, "stop")


def test_n_choices_sample_and_repeat_with_a_seed(served):
    sample = ask(temperature=1.5, top_p=0.9, n=3, seed=5)
    first, again = complete(served["alpha"], sample), complete(served["alpha"], sample)
    texts = [c["message"]["content"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in again["choices"]]  # same seed, same choices
    assert len(set(texts)) == 3  # each choice its own stream
    other = [c["message"]["content"] for c in complete(served["alpha"], {**sample, "seed": 6})["choices"]]
    assert other != texts
    greedy = complete(served["alpha"], ask(n=2))
    assert first["usage"]["completion_tokens"] == 3 * NEW and greedy["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]
    assert len({c["message"]["content"] for c in greedy["choices"]}) == 1


@pytest.mark.parametrize("fields, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 10_000}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"n": 9}, "n"),
    ({"seed": 1.5}, "seed"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": "yes"}, "stream"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_requests_are_400_naming_the_field(served, fields, param):
    with pytest.raises(RequestError) as e:
        complete(served["base"], ask(**fields))
    assert (e.value.status, e.value.param) == (400, param)
    assert e.value.body()["error"]["param"] == param and e.value.body()["error"]["type"] == "invalid_request_error"


def test_unknown_fields_are_accepted_and_developer_is_a_system_message(served):
    system = complete(served["base"], ask(messages=[{"role": "system", "content": "Be brief."}, *user()]))
    developer = complete(served["base"], ask(messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                                                       *user()], user="someone", metadata={"a": "b"}))
    assert developer["choices"][0]["message"] == system["choices"][0]["message"]


@pytest.mark.parametrize("precision, dtype", [("bf16", "torch.bfloat16"), ("fp32", "torch.float32")])
def test_serve_precision_sets_every_models_compute_precision(lively_dir, precision, dtype):
    """`tunekit serve --precision`: one precision for every model, over each model's own."""
    pool = EnginePool(window_s=0.005, precision=precision)
    try:
        served = pool.get(resolve_target(str(lively_dir)), "base")
        assert {str(p.dtype) for p in served.engine.model.parameters()} == {dtype}
    finally:
        pool.close()
