"""Checks on request bodies: turn raw JSON into settings the scheduler accepts, or name the bad field.

Design choices:
- The body is parsed as JSON whatever its Content-Type, so ``curl -d '{...}'`` works without a header.
- Every check raises ``RequestError`` naming the field (``param``) in OpenAI's notation, for example
  ``messages[2].content``, so the API can answer 400 with that field instead of failing later inside
  generation with a 500.
- A field sent as ``null`` counts as absent, so a client that sends unset options as null gets the
  defaults.
- Fields this server does not implement (``tools``, ``response_format``, ...) are ignored, like the
  requested ``model`` name: there is one model, and every response names it.
- Generation settings come out under ``astrai_infer.GenerationConfig`` field names
  (``max_tokens`` becomes ``max_new_tokens``), ready to build a config from.
- ``max_tokens`` larger than the model's context is rejected, but one that merely does not fit
  after the prompt is accepted: generation stops at the end of the context with
  ``finish_reason="length"``, so a chat page whose conversation grows keeps working.
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


# The most choices one request may ask for with ``n``; each is a sequence in the scheduler's batch.
MAX_CHOICES = 8
# OpenAI's limits: at most 4 stop strings, 20 top log-probabilities in chat and 5 in completions.
MAX_STOP_STRINGS = 4
MAX_CHAT_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat completions or completions request.

    Attributes:
        messages: The conversation, each message reduced to ``{"role", "content"}``; empty for a
            completions request.
        prompt: The completions prompt (text or token ids); None for a chat request.
        stream: Send the reply as server-sent events instead of one JSON body.
        include_usage: With ``stream``, send a last chunk with the usage counts.
        n: Number of choices to generate.
        generation: Settings the request gave, keyed by ``GenerationConfig`` field name; settings it
            left out are absent so the defaults apply.
    """

    messages: list[dict[str, str]]
    prompt: str | list[int] | None = None
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    generation: dict[str, Any] = field(default_factory=dict)


def parse_chat_request(body: bytes, max_len: int | None = None) -> ChatRequest:
    """Parse a chat completions body, raising ``RequestError`` on the first bad field.

    ``max_len`` is the model's context in tokens; ``max_tokens`` above it is rejected.
    """
    payload = _load_object(body)
    messages = _parse_messages(payload.get("messages"))
    generation = _parse_generation(payload, max_len)
    if _optional_bool(payload, "logprobs", default=False):
        generation["logprobs"] = True
        top = _optional_int(payload, "top_logprobs", minimum=0, maximum=MAX_CHAT_TOP_LOGPROBS)
        if top:
            generation["top_logprobs"] = top
    elif payload.get("top_logprobs") is not None:
        raise RequestError("top_logprobs: requires \"logprobs\": true", "top_logprobs")
    return ChatRequest(messages=messages, generation=generation, **_parse_delivery(payload))


def parse_completion_request(body: bytes, max_len: int | None = None) -> ChatRequest:
    """Parse a (legacy) completions body with a ``prompt`` string or token id list."""
    payload = _load_object(body)
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one prompt
    valid_ids = isinstance(prompt, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt)
    if prompt is None:
        raise RequestError("prompt: missing; expected a string", "prompt")
    if not (isinstance(prompt, str) or valid_ids) or not prompt:
        raise RequestError(
            f"prompt: expected a non-empty string or list of token ids (one prompt per request), "
            f"got {_json_type(prompt)}",
            "prompt",
        )
    generation = _parse_generation(payload, max_len)
    logprobs = _optional_int(payload, "logprobs", minimum=0, maximum=MAX_COMPLETION_LOGPROBS)
    if logprobs is not None:
        generation["logprobs"] = True
        if logprobs:
            generation["top_logprobs"] = logprobs
    return ChatRequest(messages=[], prompt=prompt, generation=generation, **_parse_delivery(payload))


def _load_object(body: bytes) -> dict:
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
    return payload


def _parse_delivery(payload: dict) -> dict[str, Any]:
    """Return ``stream``, ``include_usage`` and ``n``: how the reply is sent, not how it is sampled."""
    stream = _optional_bool(payload, "stream", default=False)
    options = payload.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise RequestError(f"stream_options: expected an object, got {_json_type(options)}", "stream_options")
        include_usage = _optional_bool(options, "include_usage", default=False, name="stream_options.include_usage")
    n = _optional_int(payload, "n", minimum=1, maximum=MAX_CHOICES)
    return {"stream": stream, "include_usage": include_usage, "n": n or 1}


def _parse_generation(payload: dict, max_len: int | None) -> dict[str, Any]:
    """Return the sampling settings of a request under ``GenerationConfig`` names."""
    generation: dict[str, Any] = {}
    for name in ("max_completion_tokens", "max_tokens"):
        maximum = max_len - 1 if max_len else None
        max_tokens = _optional_int(payload, name, minimum=1, maximum=maximum)
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
    min_p = _optional_number(payload, "min_p")
    if min_p is not None:
        if not 0 <= min_p < 1:
            raise RequestError(f"min_p: expected a number in [0, 1) (0 disables it), got {min_p!r}", "min_p")
        generation["min_p"] = float(min_p)
    for name in ("presence_penalty", "frequency_penalty"):
        value = _optional_number(payload, name)
        if value is not None:
            if not -2 <= value <= 2:
                raise RequestError(f"{name}: expected a number in [-2, 2] (0 disables it), got {value!r}", name)
            generation[name] = float(value)
    repetition_penalty = _optional_number(payload, "repetition_penalty")
    if repetition_penalty is not None:
        if repetition_penalty <= 0:
            raise RequestError(
                f"repetition_penalty: expected a number > 0 (1 disables it), got {repetition_penalty!r}",
                "repetition_penalty",
            )
        generation["repetition_penalty"] = float(repetition_penalty)
    top_k = _optional_int(payload, "top_k", minimum=0)
    if top_k is not None:
        generation["top_k"] = top_k
    seed = _optional_int(payload, "seed", minimum=0, maximum=MAX_SEED)
    if seed is not None:
        generation["seed"] = seed
    stop = _parse_stop(payload.get("stop"))
    if stop:
        generation["stop"] = stop
    return generation


def _parse_stop(stop: object) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(text, str) and text for text in stop):
        raise RequestError(
            f"stop: expected a non-empty string or a list of non-empty strings, got {_json_type(stop)}", "stop"
        )
    if len(stop) > MAX_STOP_STRINGS:
        raise RequestError(f"stop: expected at most {MAX_STOP_STRINGS} strings, got {len(stop)}", "stop")
    return stop


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


def _optional_bool(payload: dict, key: str, default: bool, name: str | None = None) -> bool:
    value, name = payload.get(key), name or key
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
