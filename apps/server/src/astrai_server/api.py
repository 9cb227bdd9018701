"""The JSON API: an OpenAI-compatible chat completions endpoint, the model list and a health check.

Design choices:
- Requests and responses use the fields of OpenAI's chat completions format that the README lists,
  under the same ``/v1`` paths, so code written for that format needs only a different base URL.
- Streaming uses server-sent events: a first chunk with the assistant role, one chunk per piece of
  text, a last chunk whose ``finish_reason`` is set, then ``data: [DONE]``. JSON is written with
  ``ensure_ascii=False`` so Chinese text travels as UTF-8, not as ``\\u`` escapes.
- The event generator gets every value it needs as arguments and touches no request or app context,
  so it runs unchanged after the view has returned.
- Bad input gets a 400 before generation starts, and so does a conversation too long for the model's
  context. An error during generation is logged with its traceback, and the client gets a plain 500,
  or an ``error`` event when the stream has already begun.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request

from .errors import error_response
from .model import ServedModel, get_served_model
from .validation import ChatRequest, RequestError, parse_chat_request

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

GENERATION_FAILED = "generation failed because of a server error; the server log has the details"


@bp.get("/health")
def health():
    """Report whether a model is loaded: 200 with its name and context length, else 503 and why."""
    served = get_served_model()
    if not served.ready:
        body = {"status": "no_model", "checkpoint": str(served.checkpoint), "message": served.hint}
        return jsonify(body), 503
    return jsonify({"status": "ok", "model": served.model_id, "max_len": served.max_len})


@bp.get("/v1/models")
def list_models():
    """List the one served model in OpenAI's ``list`` format."""
    served = get_served_model()
    if not served.ready:
        return _no_model_error(served)
    model = {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "astrai"}
    return jsonify({"object": "list", "data": [model]})


@bp.post("/v1/chat/completions")
def chat_completions():
    """Generate the assistant's next message for a conversation, as one JSON body or as events."""
    served = get_served_model()
    if not served.ready:
        return _no_model_error(served)
    try:
        chat = parse_chat_request(request.get_data())
        _check_context_length(served, chat)
    except RequestError as error:
        return error_response(400, error.message, param=error.param)

    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    start = time.perf_counter()
    if chat.stream:
        try:
            # Called here, not inside the event generator, so its up-front checks can still fail as JSON.
            chunks = served.generator.stream(chat.messages, **chat.generation)
        except Exception:
            logger.exception("streamed chat completion %s failed to start", completion_id)
            return error_response(500, GENERATION_FAILED, "server_error")
        events = _stream_events(chunks, served.model_id, completion_id, created, start)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(events, mimetype="text/event-stream", headers=headers)

    try:
        completion = served.generator.complete(chat.messages, **chat.generation)
    except Exception:
        logger.exception("chat completion %s failed", completion_id)
        return error_response(500, GENERATION_FAILED, "server_error")
    completion_tokens = len(completion.token_ids)
    _log_completion(completion_id, completion.prompt_tokens, completion_tokens, start)
    return jsonify(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": served.model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": completion.prompt_tokens + completion_tokens,
            },
        }
    )


def _check_context_length(served: ServedModel, chat: ChatRequest) -> None:
    """Reject a conversation that leaves no room in the context for even one reply token."""
    prompt_ids = served.generator.tokenizer.apply_chat_template(chat.messages, add_generation_prompt=True)
    if len(prompt_ids) >= served.max_len:
        raise RequestError(
            f"messages: the conversation is {len(prompt_ids)} tokens, but the model's context is "
            f"{served.max_len} tokens including the reply; drop or shorten earlier messages",
            "messages",
        )


def _stream_events(
    chunks: Iterator[Any], model_id: str, completion_id: str, created: int, start: float
) -> Iterator[str]:
    """Turn the generator's ``StreamChunk``s into the server-sent events of one completion."""

    def event(delta: dict[str, str], finish_reason: str | None = None) -> str:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return _sse_data(chunk)

    last = None
    try:
        yield event({"role": "assistant"})
        for last in chunks:
            if last.text:
                yield event({"content": last.text})
    except GeneratorExit:
        completion_tokens = last.completion_tokens if last is not None else 0
        logger.info("%s | client disconnected after %d completion tokens", completion_id, completion_tokens)
        raise
    except Exception:
        logger.exception("streamed chat completion %s failed", completion_id)
        error = {"message": GENERATION_FAILED, "type": "server_error", "param": None, "code": None}
        yield _sse_data({"error": error})
        return
    finally:
        # A stream holds the generator's lock until it is exhausted or closed. When a client
        # disconnects, Werkzeug closes this generator, GeneratorExit arrives at a ``yield`` above,
        # and closing ``chunks`` here releases the lock for the next request.
        close = getattr(chunks, "close", None)
        if close is not None:
            close()

    if last is not None:
        _log_completion(completion_id, last.prompt_tokens, last.completion_tokens, start)
    # The generator sets finish_reason on its last chunk. "stop" covers a stream with no chunks.
    finish_reason = last.finish_reason if last is not None and last.finish_reason else "stop"
    yield event({}, finish_reason)
    yield "data: [DONE]\n\n"


def _sse_data(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _no_model_error(served: ServedModel):
    return error_response(503, served.hint, "server_error", code="model_not_loaded")


def _log_completion(completion_id: str, prompt_tokens: int, completion_tokens: int, start: float) -> None:
    seconds = time.perf_counter() - start
    logger.info(
        "%s | %d prompt + %d completion tokens | %.2f s | %.1f tok/s",
        completion_id,
        prompt_tokens,
        completion_tokens,
        seconds,
        completion_tokens / max(seconds, 1e-9),
    )
