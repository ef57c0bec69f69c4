"""Answers the gateway gives itself: OpenAI's error JSON with a correct status line."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from http import HTTPStatus

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    500: "api_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return reason(self.status)


def reason(status: int) -> str:
    """The reason phrase; mitmproxy leaves 429's empty, clients and logs deserve one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def json_answer(status: int, obj: object, headers: dict[str, str] | None = None) -> Answer:
    h = {"content-type": "application/json"}
    h.update(headers or {})
    return Answer(status, json.dumps(obj, separators=(",", ":")).encode(), h)


def error(status: int, message: str, code: str, *, retry_after: float | None = None,
          anthropic: bool = False) -> Answer:
    """OpenAI's error shape; for Anthropic's paths also its top-level ``"type": "error"``,
    so both SDKs read the message."""
    body: dict = {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"),
                            "code": code}}
    if anthropic:
        body = {"type": "error", **body}
    headers = {"x-keymux-error": code}
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    return json_answer(status, body, headers)
