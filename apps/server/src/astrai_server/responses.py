"""OpenAI's response shapes for chat completions and (legacy) completions, whole and streamed.

Design choices:
- One ``CompletionShape`` per request records which of the two APIs it serves, so the routes and
  the event stream build choices, chunks and log-probabilities without branching on the API.
- A token's text for ``logprobs`` is the token decoded on its own. A byte token that is part of a
  Chinese character decodes to U+FFFD on its own; ``bytes`` still carries its UTF-8 text, as in
  OpenAI's format.
- JSON is written with ``ensure_ascii=False`` so Chinese text travels as UTF-8, not as ``\\u``
  escapes.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompletionShape:
    """The constant parts of one request's responses.

    Attributes:
        chat: True for ``/v1/chat/completions``, False for ``/v1/completions``.
        model_id: The served model's name.
        tokenizer: Decodes token ids for ``logprobs``.
        include_usage: Whether a stream ends with a usage chunk.
    """

    chat: bool
    model_id: str
    tokenizer: Any
    include_usage: bool = False
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        if not self.id:
            self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{secrets.token_hex(12)}"

    def body(self, choices: list[dict], usage: dict | None) -> dict:
        """Return the whole response of a non-streamed request."""
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id,
                "choices": choices, "usage": usage}

    def choice(self, index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
        """Return one choice of a whole response."""
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None,
              logprobs: dict | None = None, role: bool = False) -> str:
        """Return a server-sent event with a delta of one choice. ``role`` opens a chat choice."""
        if self.chat:
            delta: dict[str, str] = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        return self.event([choice])

    def event(self, choices: list[dict], usage: dict | None = None) -> str:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        payload = {"id": self.id, "object": kind, "created": self.created, "model": self.model_id,
                   "choices": choices}
        if self.include_usage:
            payload["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return sse_data(payload)

    def logprobs(self, token_ids: list[int], logprobs: list[float] | None,
                 top_logprobs: list | None, text_offset: int = 0) -> dict | None:
        """Return the ``logprobs`` object of a choice or chunk, or None when none were requested."""
        if logprobs is None:
            return None
        tokens = [self.tokenizer.decode([token_id]) for token_id in token_ids]
        tops = top_logprobs or [()] * len(tokens)
        if self.chat:
            content = [
                {"token": token, "logprob": logprob, "bytes": list(token.encode()),
                 "top_logprobs": [self._entry(token_id, value) for token_id, value in top]}
                for token, logprob, top in zip(tokens, logprobs, tops)
            ]
            return {"content": content}
        offsets, position = [], text_offset
        for token in tokens:
            offsets.append(position)
            position += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": logprobs,
            "top_logprobs": [{self.tokenizer.decode([i]): v for i, v in top} for top in tops] if top_logprobs else None,
            "text_offset": offsets,
        }

    def _entry(self, token_id: int, logprob: float) -> dict:
        token = self.tokenizer.decode([token_id])
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse_data(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
