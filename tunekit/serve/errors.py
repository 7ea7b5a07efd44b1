"""Errors the API answers with, in OpenAI's envelope: {"error": {"message", "type", "param", "code"}}.

The official client turns the status into its exception class (401 AuthenticationError,
404 NotFoundError, 413, 429 RateLimitError, ...) and reads `code`, `param` and `type` from the
envelope, so every refusal, ours or the framework's, goes out in this one shape.
"""

from __future__ import annotations

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class ApiError(Exception):
    """An HTTP error with the envelope's fields; `message` says what, where and what to do."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return envelope(self.status, self.message, self.code, self.param)


def envelope(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    """Unknown and someone else's look the same: an id never tells a caller it exists elsewhere."""
    return ApiError(404, f"no {what} {ident!r} for this API key", code=f"{what.replace(' ', '_')}_not_found", param=param)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)
