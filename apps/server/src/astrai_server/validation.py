"""Parse and check the body of a chat completions request.

Design choices:
- The body is parsed as JSON whatever its Content-Type, so ``curl -d '{...}'`` works without a header.
- Every check raises ``RequestError`` naming the field (``param``) in OpenAI's notation, for example
  ``messages[2].content``, so the API can answer 400 with that field instead of failing later inside
  generation with a 500.
- A field sent as ``null`` counts as absent, so a client that sends unset options as null gets the
  defaults.
- Fields this server does not implement (``n``, ``stop``, ``logprobs``, ...) are ignored, like the
  requested ``model`` name: there is one model, and every response names it.
- Generation settings come out under ``astrai_infer.GenerationConfig`` field names
  (``max_tokens`` becomes ``max_new_tokens``), ready to pass as keyword overrides.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from astrai_core import CHAT_ROLES

# The largest seed torch.Generator.manual_seed accepts (and so astrai_infer.GenerationConfig).
MAX_SEED = 2**64 - 1


class RequestError(ValueError):
    """An invalid request. ``param`` names the field at fault, or is None for the body as a whole."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat completions request.

    Attributes:
        messages: The conversation, each message reduced to ``{"role", "content"}``.
        stream: Send the reply as server-sent events instead of one JSON body.
        generation: Settings the request gave, keyed by ``GenerationConfig`` field name; settings it
            left out are absent so the generator's defaults apply.
    """

    messages: list[dict[str, str]]
    stream: bool = False
    generation: dict[str, Any] = field(default_factory=dict)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse a request body into a ``ChatRequest``, raising ``RequestError`` on the first bad field."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as error:
        # json.loads raises ValueError for malformed JSON or bytes that are not UTF-8, and
        # RecursionError for arrays or objects nested thousands of levels deep.
        raise RequestError(f"request body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise RequestError(f"request body must be a JSON object, got {_json_type(payload)}")

    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"model: expected a string, got {_json_type(model)}", "model")

    messages = _parse_messages(payload.get("messages"))
    stream = _optional_bool(payload, "stream", default=False)

    generation: dict[str, Any] = {}
    max_tokens = _optional_int(payload, "max_tokens", minimum=1)
    if max_tokens is not None:
        generation["max_new_tokens"] = max_tokens
    temperature = _optional_number(payload, "temperature")
    if temperature is not None:
        if temperature < 0:
            raise RequestError(
                f"temperature: expected a number >= 0 (0 means greedy decoding), got {temperature!r}",
                "temperature",
            )
        generation["temperature"] = float(temperature)
    top_p = _optional_number(payload, "top_p")
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise RequestError(
                f"top_p: expected a number in (0, 1] (1 disables nucleus sampling), got {top_p!r}", "top_p"
            )
        generation["top_p"] = float(top_p)
    top_k = _optional_int(payload, "top_k", minimum=0)
    if top_k is not None:
        generation["top_k"] = top_k
    seed = _optional_int(payload, "seed", minimum=0, maximum=MAX_SEED)
    if seed is not None:
        generation["seed"] = seed
    return ChatRequest(messages=messages, stream=stream, generation=generation)


def _parse_messages(messages: object) -> list[dict[str, str]]:
    if messages is None:
        raise RequestError("messages: missing; expected a list of {'role', 'content'} objects", "messages")
    if not isinstance(messages, list):
        raise RequestError(f"messages: expected a list, got {_json_type(messages)}", "messages")
    if not messages:
        raise RequestError("messages: must contain at least one message", "messages")
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(
                f"{where}: expected an object with 'role' and 'content', got {_json_type(message)}", where
            )
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            expected = ", ".join(CHAT_ROLES)
            error_message = f"{where}.role: expected one of {expected}, got {_json_type(role)}"
            raise RequestError(error_message, f"{where}.role")
        if not isinstance(content, str):
            raise RequestError(
                f"{where}.content: expected a string, got {_json_type(content)}", f"{where}.content"
            )
        checked.append({"role": role, "content": content})
    return checked


def _optional_bool(payload: dict, name: str, default: bool) -> bool:
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"{name}: expected true or false, got {_json_type(value)}", name)
    return value


def _optional_int(payload: dict, name: str, minimum: int, maximum: int | None = None) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    # bool is a subclass of int in Python, but true/false is not a count in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name}: expected an integer, got {_json_type(value)}", name)
    if value < minimum or (maximum is not None and value > maximum):
        expected = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise RequestError(f"{name}: expected an integer {expected}, got {value}", name)
    return value


def _optional_number(payload: dict, name: str) -> float | int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name}: expected a number, got {_json_type(value)}", name)
    # Python's json module accepts NaN and Infinity, which no sampling setting can use.
    if not math.isfinite(value):
        raise RequestError(f"{name}: expected a finite number, got {value!r}", name)
    return value


def _json_type(value: object) -> str:
    """Name ``value``'s type as JSON does (object, array, string, ...), which is what the client sent."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_shorten(value)}"
    if isinstance(value, list):
        return "array"
    return "object"


def _shorten(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
