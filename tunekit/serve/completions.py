"""OpenAI chat completions over the inference engine, independent of the web framework.

`complete(served, request)` returns a `chat.completion` object and `stream(served, request)` the
`chat.completion.chunk` objects of one, for a request body as the official client sends it (see
/work/shared/reference/openai-api.md section 4). A field the engine cannot honour is a 400
(RequestError), never silently ignored; fields it does not know are accepted, as vLLM does.

What an answer is: the one `tunekit chat` gives for the same model and conversation. The prompt is
the model's chat template (`template.prompt_ids`), decoding stops at its stop tokens, and the text
is stripped of surrounding whitespace. `temperature` 0 is greedy; OpenAI's default is 1 (sampled).
`max_tokens` defaults to `tunekit chat`'s 256, within the model's context. A `stop` string ends an
answer where it starts (it is not part of the text); while streaming, text that could be the start
of a stop string is held back until it is known not to be one.

`add_chat_route` puts `POST /v1/chat/completions` (JSON, or SSE `data: {...}` chunks ending in
`data: [DONE]`) on a FastAPI app; FastAPI is imported only there.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from tunekit.data.records import check_messages
from tunekit.data.template import prompt_ids
from tunekit.infer.pool import Served
from tunekit.infer.sampling import Sampling, sampler
from tunekit.infer.scheduler import Ask, Request
from tunekit.infer.stream import settled

DEFAULT_MAX_TOKENS = Sampling().max_new_tokens  # `tunekit chat`'s default
MAX_N = 8
_UNSUPPORTED = {  # fields that would change what an answer is; the value that means "not used"
    "tools": None, "functions": None, "tool_choice": None, "function_call": None, "logprobs": False,
    "top_logprobs": None, "logit_bias": None, "presence_penalty": 0, "frequency_penalty": 0, "audio": None,
}


class RequestError(Exception):
    """A request the API refuses: HTTP `status`, a message saying what to change, the field (`param`)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = "invalid_value"):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Params:
    messages: list[dict]
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str]
    n: int
    seed: int | None
    stream: bool
    include_usage: bool


def parse(request: dict) -> Params:
    """The request's fields, checked; RequestError naming the first bad one."""
    if not isinstance(request, dict):
        raise RequestError("the request body must be a JSON object", None)
    for key, off in _UNSUPPORTED.items():
        if request.get(key, off) not in (off, None, [], {}):
            raise RequestError(f"`{key}` is not supported by this server; leave it out", key, code="unsupported_parameter")
    fmt = request.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise RequestError("only response_format {\"type\": \"text\"} is supported", "response_format",
                           code="unsupported_parameter")
    stream = _bool(request, "stream")
    options = request.get("stream_options")
    if options is not None and not stream:
        raise RequestError("stream_options applies only with stream: true", "stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object such as {\"include_usage\": true}", "stream_options")
    max_tokens = _int(request, "max_completion_tokens", 1) or _int(request, "max_tokens", 1)
    return Params(_messages(request.get("messages")), max_tokens, _number(request, "temperature", 0, 2, 1.0),
                  _number(request, "top_p", 0, 1, 1.0, open_low=True), _stops(request.get("stop")),
                  _int(request, "n", 1, MAX_N) or 1, _int(request, "seed", None), stream,
                  bool(options and _bool(options, "include_usage", "stream_options.include_usage")))


def _bool(obj: dict, key: str, param: str | None = None) -> bool:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"`{param or key}` must be true or false, got {value!r:.40}", param or key)
    return bool(value)


def _int(obj: dict, key: str, low: int | None, high: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"`{key}` must be an integer, got {value!r:.40}", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"from {low} to {high}"
        raise RequestError(f"`{key}` is {value}; it must be {bounds}", key)
    return value


def _number(obj: dict, key: str, low: float, high: float, default: float, open_low: bool = False) -> float:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"`{key}` must be a number, got {value!r:.40}", key)
    if value > high or value < low or (open_low and value == low):
        raise RequestError(f"`{key}` is {value}; it must be {'above' if open_low else 'from'} {low} "
                           f"{'and at most' if open_low else 'to'} {high}", key)
    return float(value)


def _stops(value: object) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return []
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError("`stop` must be a non-empty string or a list of up to 4 of them", "stop")
    return stops


def _messages(value: object) -> list[dict]:
    """Text conversations: content as a string or a list of text parts; `developer` is a system message."""
    if not isinstance(value, list) or not value:
        raise RequestError("`messages` must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with role and content", f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise RequestError(f"messages[{i}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are "
                                   f"supported", f"messages[{i}].content")
            content = "".join(p["text"] for p in content)
        role = "system" if m.get("role") == "developer" else m.get("role")
        out.append({"role": role, "content": content})
    problem = check_messages(out, need_assistant=False)
    if problem is not None:
        raise RequestError(f"`messages` is not a conversation to answer: {problem[1]}", "messages")
    return out


# -- answering -------------------------------------------------------------------------------------


class ChoiceText:
    """One choice's text as its tokens come: stripped as `tunekit chat` strips it, cut at a stop string."""

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.shown = ""
        self.stopped = False  # a stop string was written: the answer ends before it

    def _raw(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()

    def add(self, tokens: list[int]) -> str:
        """Take new tokens; the text that is now certain and was not handed out before."""
        if self.stopped or not tokens:
            return ""
        self.ids += tokens
        raw = self._raw()
        cut = min((i for i in (raw.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._show(raw[:cut].rstrip())
        text = settled(raw)
        return self._show(text[: len(text) - self._held(text)])

    def _held(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string."""
        return max((k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])),
                   default=0)

    def close(self) -> str:
        """The rest of the answer (the text is complete)."""
        if self.stopped:
            return ""
        return self._show(self._raw().rstrip())

    def _show(self, text: str) -> str:
        if len(text) > len(self.shown) and text.startswith(self.shown):
            piece, self.shown = text[len(self.shown):], text
            return piece
        return ""


@dataclass
class _Call:
    params: Params
    prompt: list[int]
    max_tokens: int
    model: str
    id: str
    created: int
    counts: list[int] = field(default_factory=list)  # tokens written per choice


def _prepare(served: Served, request: dict) -> _Call:
    params = parse(request)
    prompt = prompt_ids(served.tokenizer, params.messages)
    window = served.context
    max_tokens = params.max_tokens or DEFAULT_MAX_TOKENS
    if window is not None:
        if len(prompt) >= window:
            raise RequestError(f"the messages make a prompt of {len(prompt)} tokens (with the chat template), "
                               f"which does not fit the model's context of {window} tokens; shorten them",
                               "messages", code="context_length_exceeded")
        if params.max_tokens is None:
            max_tokens = min(max_tokens, window - len(prompt))
        elif len(prompt) + max_tokens > window:
            key = "max_completion_tokens" if request.get("max_completion_tokens") is not None else "max_tokens"
            raise RequestError(f"the prompt ({len(prompt)} tokens) and {key} ({max_tokens}) exceed the model's context "
                               f"of {window} tokens; ask for at most {window - len(prompt)}", key,
                               code="context_length_exceeded")
    model = request.get("model") if isinstance(request.get("model"), str) else served.label
    return _Call(params, prompt, max_tokens, model, f"chatcmpl-{uuid.uuid4().hex}", int(time.time()))


def _submit(served: Served, call: _Call) -> Request:
    p, device = call.params, served.engine.model.device
    asks = []
    for i in range(p.n):
        generator = None
        if p.temperature > 0:  # each choice its own random stream: the same seed gives the same choices in any batch
            generator = torch.Generator(device=device)
            generator.manual_seed(p.seed + i) if p.seed is not None else generator.seed()
        asks.append(Ask(call.prompt, call.max_tokens, served.stop, served.adapter,
                        sampler(p.temperature, p.top_p, generator)))
    return served.engine.submit(asks)


def _answers(served: Served, call: _Call, request: Request) -> Iterator[tuple[int, str, str | None]]:
    """(choice index, new text, finish reason or None) as the engine writes; `call.counts` gets tokens per choice."""
    texts = [ChoiceText(served.tokenizer, call.params.stop) for _ in range(call.params.n)]
    call.counts = [0] * call.params.n
    try:
        for event in request:
            text = texts[event.index]
            was_stopped = text.stopped
            piece = text.add(event.tokens)
            if not was_stopped:
                call.counts[event.index] = len(text.ids)
            if text.stopped and not was_stopped and event.finish is None:
                request.rows[event.index].cancel()  # no more tokens wanted; its "cancelled" finish follows
            if event.finish is not None:
                piece += text.close()
                yield event.index, piece, "stop" if text.stopped or event.finish == "stop" else "length"
            elif piece:
                yield event.index, piece, None
    finally:
        request.cancel()  # the reader went away (or all ended): free the rows


def _usage(call: _Call) -> dict:
    done = sum(call.counts)
    return {"prompt_tokens": len(call.prompt), "completion_tokens": done, "total_tokens": len(call.prompt) + done}


def complete(served: Served, request: dict) -> dict:
    """A `chat.completion` object for `request` (an OpenAI chat completions body, without stream)."""
    call = _prepare(served, request)
    texts, finish = [""] * call.params.n, [None] * call.params.n
    for index, piece, reason in _answers(served, call, _submit(served, call)):
        texts[index] += piece
        finish[index] = reason or finish[index]
    choices = [{"index": i, "message": {"role": "assistant", "content": texts[i], "refusal": None},
                "logprobs": None, "finish_reason": finish[i]} for i in range(call.params.n)]
    return {"id": call.id, "object": "chat.completion", "created": call.created, "model": call.model,
            "system_fingerprint": None, "choices": choices, "usage": _usage(call)}


def stream(served: Served, request: dict) -> Iterator[dict]:
    """`chat.completion.chunk` objects for `request`. The request is checked now (RequestError before
    any chunk); it is queued when the first chunk is asked for, and closing the iterator cancels it."""
    call = _prepare(served, request)
    return _chunks(served, call)


def _chunks(served: Served, call: _Call) -> Iterator[dict]:
    usage = call.params.include_usage

    def chunk(choices: list[dict]) -> dict:
        out = {"id": call.id, "object": "chat.completion.chunk", "created": call.created, "model": call.model,
               "system_fingerprint": None, "choices": choices}
        return {**out, "usage": None} if usage else out

    request = _submit(served, call)
    try:
        for i in range(call.params.n):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        for index, piece, reason in _answers(served, call, request):
            if piece:
                yield chunk([{"index": index, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
            if reason is not None:
                yield chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}])
    finally:  # also when the reader closes the stream early (a client gone): the rows leave the batch
        request.cancel()
    if usage:
        yield {**chunk([]), "usage": _usage(call)}


# -- the route -------------------------------------------------------------------------------------


def add_chat_route(app, engine_for_model: Callable[[str, object], Served], auth_dependency=None) -> None:
    """`POST /v1/chat/completions` on a FastAPI `app`. `engine_for_model(model name, what
    auth_dependency returned)` gives the Served model or raises (a 404 for an unknown name: an
    exception with `status` and `body()`, such as RequestError or serve.errors.ApiError). Errors
    before the first chunk are the status and envelope; one during a stream is a last
    `data: {"error": {...}}` event, which the openai client raises as APIError."""
    import json

    from fastapi import Body, Depends
    from fastapi.responses import JSONResponse, StreamingResponse

    auth = Depends(auth_dependency) if auth_dependency is not None else Depends(lambda: None)

    def refuse(e) -> JSONResponse:
        headers = {"x-should-retry": "false"} if getattr(e, "status", 500) < 500 else {}
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    # A plain `def`: FastAPI runs it in its thread pool, and a streamed body (a plain iterator) is read
    # there too, so waiting on the engine never blocks the event loop.
    @app.post("/v1/chat/completions")
    def chat_completions(body: dict = Body(...), who=auth):  # noqa: B008 (FastAPI's way of declaring parameters)
        try:
            if not isinstance(body.get("model"), str) or not body["model"]:
                raise RequestError("`model` must name a model (GET /v1/models lists them)", "model")
            served = engine_for_model(body["model"], who)
            if not body.get("stream"):
                return complete(served, body)
            chunks = stream(served, body)
        except Exception as e:
            if hasattr(e, "status") and hasattr(e, "body"):
                return refuse(e)
            raise

        def events() -> Iterator[bytes]:
            try:
                for c in chunks:
                    yield f"data: {json.dumps(c, ensure_ascii=False)}\n\n".encode()
            except Exception as e:  # noqa: BLE001 (mid-stream: the client raises what the event says)
                error = RequestError(f"the answer failed: {e}", None, status=500, code="server_error")
                yield f"data: {json.dumps(error.body())}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
