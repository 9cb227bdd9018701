"""The JSON API: OpenAI-compatible chat completions and completions, the model list, health, metrics.

Design choices:
- Requests and responses use OpenAI's shapes (``responses.py``) under the same ``/v1`` paths, so
  the official ``openai`` client works with only a different base URL.
- Every request is submitted to the app's ``astrai_infer.Scheduler``, which batches it with the
  other requests in flight. This module only checks input and formats output. ``n > 1`` submits n
  requests; with a ``seed``, choice ``i`` uses ``seed + i`` so the choices differ but repeat.
- Streaming uses server-sent events. A chat choice opens with the assistant role, every chunk
  carries new text, and the last chunk of each choice alone has a ``finish_reason``. With
  ``stream_options.include_usage`` a chunk with empty ``choices`` and the usage counts comes
  next, then ``data: [DONE]``. Choices are streamed one after the other; they are generated
  together.
- When a client disconnects, the WSGI server closes the event generator, and closing it cancels
  the requests' handles, so the scheduler frees their rows before the next step.
- Bad input gets a 400 naming the field before anything is submitted, and so does a prompt too
  long for the model's context. An error during generation is logged with its traceback, and the
  client gets a plain 500, or an ``error`` event when the stream has already begun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from astrai_infer import GenerationConfig
from flask import Blueprint, Response, current_app, jsonify, request

from .errors import error_response
from .model import ServedModel, get_served_model
from .responses import CompletionShape, sse_data, usage
from .validation import ChatRequest, RequestError, parse_chat_request, parse_completion_request

logger = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

GENERATION_FAILED = "generation failed because of a server error; the server log has the details"
METRICS_KEY = "astrai_metrics"


@bp.after_app_request
def _count_request(response):
    """Count every API request by route and status for ``/metrics``."""
    rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
    if rule.startswith("/v1") or rule == "unmatched":
        current_app.extensions[METRICS_KEY].count_request(rule, response.status_code)
    return response


@bp.get("/health")
def health():
    """Report whether a model is loaded: 200 with its name and context length, else 503 and why."""
    served = get_served_model()
    if not served.ready:
        body = {"status": "no_model", "checkpoint": str(served.checkpoint), "message": served.hint}
        return jsonify(body), 503
    return jsonify({"status": "ok", "model": served.model_id, "max_len": served.max_len})


@bp.get("/metrics")
def metrics():
    """Request, token and latency counters and the scheduler's queue, in Prometheus text format."""
    served = get_served_model()
    stats = served.scheduler.stats() if served.ready else None
    text = current_app.extensions[METRICS_KEY].render(stats)
    return Response(text, mimetype="text/plain", headers={"Content-Type": "text/plain; version=0.0.4"})


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
    return _complete(chat=True)


@bp.post("/v1/completions")
def completions():
    """Continue a text prompt, as one JSON body or as events."""
    return _complete(chat=False)


def _complete(chat: bool):
    served = get_served_model()
    if not served.ready:
        return _no_model_error(served)
    start = time.perf_counter()
    body = request.get_data()  # raises Flask's 413 for a body over MAX_CONTENT_LENGTH
    try:
        parse = parse_chat_request if chat else parse_completion_request
        parsed = parse(body, served.max_len)
        handles = _submit(served, parsed, "messages" if chat else "prompt")
    except RequestError as error:
        return error_response(400, error.message, param=error.param)
    except Exception:
        logger.exception("submitting a %s request failed", "chat" if chat else "completion")
        return error_response(500, GENERATION_FAILED, "server_error")

    shape = CompletionShape(chat, served.model_id, served.scheduler.tokenizer, parsed.include_usage)
    metrics = current_app.extensions[METRICS_KEY]
    if parsed.stream:
        events = _stream_events(handles, shape, metrics, start)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return Response(events, mimetype="text/event-stream", headers=headers)

    try:
        results = [handle.result() for handle in handles]
    except Exception:
        logger.exception("completion %s failed", shape.id)
        return error_response(500, GENERATION_FAILED, "server_error")
    choices = [
        shape.choice(index, result.text, _finish(result.finish_reason),
                     shape.logprobs(result.token_ids, result.logprobs, result.top_logprobs))
        for index, result in enumerate(results)
    ]
    prompt_tokens, completion_tokens = results[0].prompt_tokens, sum(len(r.token_ids) for r in results)
    metrics.record_completion(prompt_tokens, completion_tokens, time.perf_counter() - start)
    _log_completion(shape.id, prompt_tokens, completion_tokens, start)
    return jsonify(shape.body(choices, usage(prompt_tokens, completion_tokens)))


def _submit(served: ServedModel, parsed: ChatRequest, prompt_field: str) -> list:
    """Build the config, submit ``n`` requests and return their handles; bad prompts raise ``RequestError``."""
    config = GenerationConfig(**parsed.generation)
    prompt = parsed.messages if parsed.prompt is None else parsed.prompt
    handles = []
    try:
        for index in range(parsed.n):
            seed = None if config.seed is None else (config.seed + index) % 2**64
            handles.append(served.scheduler.submit(prompt, config.replace(seed=seed)))
    except ValueError as error:
        for handle in handles:
            handle.cancel()
        # The scheduler's message names the prompt and the context length; the field is ours.
        raise RequestError(f"{prompt_field}: {error}", prompt_field) from None
    return handles


def _stream_events(handles: list, shape: CompletionShape, metrics, start: float) -> Iterator[str]:
    """Turn the handles' ``StreamChunk``s into the server-sent events of one response."""
    completion_tokens, prompt_tokens, first = 0, handles[0].prompt_tokens, True
    try:
        for index, handle in enumerate(handles):
            if shape.chat:
                yield shape.chunk(index, None, role=True)
            text_offset = 0
            for piece in handle:
                if first and piece.completion_tokens:
                    metrics.record_first_token(time.perf_counter() - start)
                    first = False
                logprobs = None
                if piece.logprobs:
                    token_ids = handle.token_ids[-len(piece.logprobs):]
                    logprobs = shape.logprobs(token_ids, piece.logprobs, piece.top_logprobs, text_offset)
                if piece.text or logprobs:
                    yield shape.chunk(index, piece.text, logprobs=logprobs)
                text_offset += len(piece.text)
                if piece.finish_reason is not None:
                    completion_tokens += piece.completion_tokens
                    yield shape.chunk(index, None, _finish(piece.finish_reason))
    except GeneratorExit:
        received = sum(len(handle.token_ids) for handle in handles)
        logger.info("%s | client disconnected after %d completion tokens", shape.id, received)
        raise
    except Exception:
        logger.exception("streamed completion %s failed", shape.id)
        error = {"message": GENERATION_FAILED, "type": "server_error", "param": None, "code": None}
        yield sse_data({"error": error})
        return
    finally:
        # Cancels whatever is still generating, for example after a client disconnect.
        for handle in handles:
            handle.close()

    metrics.record_completion(prompt_tokens, completion_tokens, time.perf_counter() - start)
    _log_completion(shape.id, prompt_tokens, completion_tokens, start)
    if shape.include_usage:
        yield shape.event([], usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"


def _finish(reason: str | None) -> str:
    """OpenAI's finish reason: a cancelled request (its client is gone) reads as "stop"."""
    return reason if reason in ("stop", "length") else "stop"


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
