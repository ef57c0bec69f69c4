"""Response bodies and SSE event builders of the mock upstream (OpenAI and Anthropic shapes).

Pure functions: a parsed request body in, a JSON-able dict (or a list of encoded SSE
events) out.  Nothing here does I/O, keeps state or ever sees a credential except
:func:`error_body`, which only receives the already masked form, and the echo builders at
the end, which play a hostile upstream on purpose.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import json
import struct
import time
from functools import lru_cache

REPLY_TEXT = "Hello from the keymux mock upstream."
EMBEDDING_DIM = 8
DEFAULT_MODEL = "mock-model"
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5", DEFAULT_MODEL)

_ids = itertools.count(1)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: object) -> bytes:
    return _dumps(obj).encode()


def new_id(prefix: str) -> str:
    return f"{prefix}mock{next(_ids):010d}"


# ---------------------------------------------------------------- text and tokens

@lru_cache(maxsize=64)
def reply_pieces(chunks: int) -> tuple[str, ...]:
    """The reply split into ``chunks`` word pieces; joined they give the full reply."""
    words = REPLY_TEXT.split()
    n = max(1, chunks)
    w = len(words)
    if n <= w:
        groups = [" ".join(words[i * w // n:(i + 1) * w // n]) for i in range(n)]
    else:  # more chunks than words: keep cycling through the sentence
        groups = [words[i % w] for i in range(n)]
    return tuple(g if i == 0 else " " + g for i, g in enumerate(groups))


def _text_of(obj: object) -> str:
    """All human text in a prompt-ish value (str, list of parts, message dicts...)."""
    if isinstance(obj, str):
        return obj
    if isinstance(obj, list):
        return "".join(_text_of(x) for x in obj)
    if isinstance(obj, dict):
        return "".join(_text_of(obj[k]) for k in ("content", "text", "input") if k in obj)
    return ""


def prompt_tokens(body: dict) -> int:
    text = "".join(_text_of(body.get(k)) for k in ("system", "instructions", "messages", "prompt", "input"))
    return max(1, len(text) // 4)


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _model(body: dict) -> str:
    m = body.get("model")
    return m if isinstance(m, str) and m else DEFAULT_MODEL


# ---------------------------------------------------------------- SSE framing

def sse(data: object, event: str | None = None) -> bytes:
    payload = data if isinstance(data, bytes) else dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def _wants_usage(body: dict) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


# ---------------------------------------------------------------- OpenAI

def chat_completion(body: dict, chunks: int) -> dict:
    pieces = reply_pieces(chunks)
    return {
        "id": new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
        "model": _model(body), "system_fingerprint": "fp_mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(prompt_tokens(body), len(pieces)),
    }


def chat_completion_stream(body: dict, chunks: int) -> list[bytes]:
    pieces = reply_pieces(chunks)
    usage = _wants_usage(body)
    base = {"id": new_id("chatcmpl-"), "object": "chat.completion.chunk", "created": int(time.time()),
            "model": _model(body), "system_fingerprint": "fp_mock"}

    def chunk(delta: dict, finish: str | None) -> bytes:
        c = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        if usage:
            c["usage"] = None
        return sse(c)

    events = [chunk({"role": "assistant", "content": ""}, None)]
    events += [chunk({"content": p}, None) for p in pieces]
    events.append(chunk({}, "stop"))
    if usage:
        events.append(sse(dict(base, choices=[], usage=_usage(prompt_tokens(body), len(pieces)))))
    events.append(SSE_DONE)
    return events


def text_completion(body: dict, chunks: int) -> dict:
    pieces = reply_pieces(chunks)
    return {
        "id": new_id("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": _model(body),
        "choices": [{"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(prompt_tokens(body), len(pieces)),
    }


def text_completion_stream(body: dict, chunks: int) -> list[bytes]:
    pieces = reply_pieces(chunks)
    base = {"id": new_id("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": _model(body)}

    def chunk(text: str, finish: str | None) -> bytes:
        return sse(dict(base, choices=[{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]))

    events = [chunk(p, None) for p in pieces]
    events.append(chunk("", "stop"))
    if _wants_usage(body):
        events.append(sse(dict(base, choices=[], usage=_usage(prompt_tokens(body), len(pieces)))))
    events.append(SSE_DONE)
    return events


def _vector(text: str) -> list[float]:
    d = hashlib.sha256(text.encode()).digest()
    return [round(int.from_bytes(d[2 * i:2 * i + 2], "big") / 32767.5 - 1.0, 6) for i in range(EMBEDDING_DIM)]


def embeddings(body: dict) -> dict:
    raw = body.get("input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw)):
        inputs = [raw]
    elif isinstance(raw, list):
        inputs = raw
    else:
        inputs = [""]
    b64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else json.dumps(item)
        tokens += max(1, len(text) // 4)
        vec = _vector(text)
        emb = base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": _model(body),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def models(anthropic: bool) -> dict:
    if anthropic:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    return {"object": "list",
            "data": [{"id": m, "object": "model", "created": 1700000000, "owned_by": "keymux-mock"} for m in MODELS]}


# ---------------------------------------------------------------- OpenAI Responses API

def _response_obj(body: dict, rid: str, status: str, output: list, usage: dict | None) -> dict:
    return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "model": _model(body), "output": output, "usage": usage, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "parallel_tool_calls": True, "tool_choice": "auto",
            "tools": [], "temperature": 1.0, "top_p": 1.0, "metadata": {}}


def _response_usage(body: dict, n: int) -> dict:
    p = prompt_tokens(body)
    return {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": p + n}


def _message_item(mid: str, text: str, status: str = "completed") -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"id": mid, "type": "message", "status": status, "role": "assistant", "content": content}


def response(body: dict, chunks: int) -> dict:
    pieces = reply_pieces(chunks)
    return _response_obj(body, new_id("resp_"), "completed", [_message_item(new_id("msg_"), "".join(pieces))],
                         _response_usage(body, len(pieces)))


def response_stream(body: dict, chunks: int) -> list[bytes]:
    pieces = reply_pieces(chunks)
    text = "".join(pieces)
    rid, mid = new_id("resp_"), new_id("msg_")
    seq = itertools.count()
    events: list[bytes] = []

    def ev(type_: str, **fields: object) -> None:
        events.append(sse({"type": type_, "sequence_number": next(seq), **fields}, event=type_))

    part = {"type": "output_text", "text": "", "annotations": []}
    where = {"item_id": mid, "output_index": 0, "content_index": 0}
    ev("response.created", response=_response_obj(body, rid, "in_progress", [], None))
    ev("response.in_progress", response=_response_obj(body, rid, "in_progress", [], None))
    ev("response.output_item.added", output_index=0, item=_message_item(mid, "", "in_progress"))
    ev("response.content_part.added", part=part, **where)
    for p in pieces:
        ev("response.output_text.delta", delta=p, logprobs=[], **where)
    ev("response.output_text.done", text=text, logprobs=[], **where)
    ev("response.content_part.done", part=dict(part, text=text), **where)
    item = _message_item(mid, text)
    ev("response.output_item.done", output_index=0, item=item)
    ev("response.completed", response=_response_obj(body, rid, "completed", [item], _response_usage(body, len(pieces))))
    return events


# ---------------------------------------------------------------- Anthropic

def anthropic_message(body: dict, chunks: int) -> dict:
    pieces = reply_pieces(chunks)
    return {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": _model(body),
            "content": [{"type": "text", "text": "".join(pieces)}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": {"input_tokens": prompt_tokens(body), "output_tokens": len(pieces)}}


def anthropic_stream(body: dict, chunks: int) -> list[bytes]:
    pieces = reply_pieces(chunks)
    message = {"id": new_id("msg_"), "type": "message", "role": "assistant", "model": _model(body), "content": [],
               "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": prompt_tokens(body), "output_tokens": 1}}
    events = [
        sse({"type": "message_start", "message": message}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start"),
        sse({"type": "ping"}, "ping"),
    ]
    events += [sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
                   "content_block_delta") for p in pieces]
    events += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": len(pieces)}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


def count_tokens(body: dict) -> dict:
    return {"input_tokens": prompt_tokens(body)}


# ---------------------------------------------------------------- errors

_OPENAI_ERRORS = {  # status -> (type, code, message)
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key",
          "Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."),
    402: ("insufficient_quota", "payment_required", "Payment required: the account for {key} has no credits left."),
    403: ("permission_error", "permission_denied", "You are not allowed to use this resource with key {key}."),
    404: ("invalid_request_error", "unknown_url", "Not found."),
    413: ("invalid_request_error", "request_too_large", "Request body too large."),
    429: ("rate_limit_exceeded", "rate_limit_exceeded",
          "Rate limit reached for requests on key {key}. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request."),
    502: ("server_error", "bad_gateway", "Bad gateway."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded, please try again later."),
}
_QUOTA = ("insufficient_quota", "insufficient_quota",
          "You exceeded your current quota, please check your plan and billing details.")

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error",
}
_ANTHROPIC_MESSAGES = {401: "invalid x-api-key", 429: "Number of requests has exceeded your rate limit.",
                       529: "Overloaded"}


def error_body(status: int, *, anthropic: bool = False, quota: bool = False,
               masked_key: str = "", message: str | None = None) -> dict:
    """A provider-like error body; ``masked_key`` must already be masked."""
    if anthropic or status == 529:
        msg = message or _ANTHROPIC_MESSAGES.get(status) or f"Mock upstream error {status}."
        if quota and status == 429:
            msg = "Your credit balance is too low to access the Anthropic API."
        return {"type": "error", "error": {"type": _ANTHROPIC_ERRORS.get(status, "api_error"), "message": msg}}
    type_, code, msg = _QUOTA if quota and status == 429 else _OPENAI_ERRORS.get(
        status, ("server_error", None, f"Mock upstream error {status}."))
    return {"error": {"message": message or msg.format(key=masked_key or "…"), "type": type_,
                      "param": None, "code": code}}


# ---------------------------------------------------------------- a hostile upstream's echo

def echo_event(endpoint: str, body: dict, key: str) -> tuple[int, bytes]:
    """One extra SSE event carrying the raw ``key`` as reply text, and where it goes in the
    stream (after the events a client SDK needs first), for the ``echo: [sse]`` behaviour."""
    if endpoint == "messages":
        return 3, sse({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": key}}, "content_block_delta")
    if endpoint == "responses":
        return 4, sse({"type": "response.output_text.delta", "sequence_number": 0, "delta": key,
                       "logprobs": [], "item_id": "msg_echo", "output_index": 0, "content_index": 0},
                      "response.output_text.delta")
    if endpoint == "completions":
        return 0, sse({"id": "cmpl-echo", "object": "text_completion", "created": int(time.time()),
                       "model": _model(body), "choices": [{"text": key, "index": 0, "logprobs": None,
                                                           "finish_reason": None}]})
    return 1, sse({"id": "chatcmpl-echo", "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": _model(body), "choices": [{"index": 0, "delta": {"content": key},
                                                       "logprobs": None, "finish_reason": None}]})


def echo_in_body(obj: dict, key: str) -> dict:
    """The ``echo: [body]`` behaviour: the raw key in an error's message, or a 200's field."""
    err = obj.get("error")
    if isinstance(err, dict):
        return {**obj, "error": {**err, "message": f"{err.get('message', '')} (key: {key})"}}
    return {**obj, "echo": key}
