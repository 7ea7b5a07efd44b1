"""POST /v1/chat/completions (completions.add_chat_route) driven by the official openai client:
answers equal `tunekit chat`'s, streamed and not; errors arrive as the client's exceptions."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from fastapi.testclient import TestClient  # noqa: E402
from serve_builders import user  # noqa: E402
from test_completions import NEW, chat_answer  # noqa: E402

from tunekit.infer.pool import EnginePool  # noqa: E402
from tunekit.models.tuned import resolve_target  # noqa: E402
from tunekit.serve.completions import RequestError, add_chat_route  # noqa: E402


@pytest.fixture(scope="module")
def client(lively_dir, adapter_a):
    pool = EnginePool(window_s=0.005)
    targets = {"base": resolve_target(str(lively_dir)), "alpha": resolve_target(str(adapter_a))}
    seen = []

    def owner(authorization: str = fastapi.Header("")) -> str:
        if authorization != "Bearer sk-test":
            raise fastapi.HTTPException(401, "bad key")
        return "team"

    def engine_for_model(name: str, who: str):
        seen.append(who)
        if name not in targets:
            raise RequestError(f"The model `{name}` does not exist.", "model", status=404, code="model_not_found")
        return pool.get(targets[name], name)

    app = fastapi.FastAPI()
    add_chat_route(app, engine_for_model, owner)
    with TestClient(app) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="sk-test", http_client=http, max_retries=0), seen
    pool.close()


def test_the_openai_client_gets_tunekit_chats_answer(client, adapter_a):
    api, seen = client
    want = chat_answer(adapter_a)
    out = api.chat.completions.create(model="alpha", messages=user(), temperature=0, max_completion_tokens=NEW)
    assert out.choices[0].message.content == want and out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == NEW and out.model == "alpha" and seen[-1] == "team"
    chunks = list(api.chat.completions.create(model="alpha", messages=user(), temperature=0, max_tokens=NEW, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == out.usage.total_tokens


def test_errors_reach_the_client_as_its_exceptions(client):
    api, _ = client
    with pytest.raises(openai.NotFoundError) as e:
        api.chat.completions.create(model="nope", messages=user())
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model="base", messages=user(), temperature=7)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model="base", messages=user(), stream=True, n=100)
    wrong = openai.OpenAI(base_url=str(api.base_url), api_key="sk-wrong", http_client=api._client, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="base", messages=user())
