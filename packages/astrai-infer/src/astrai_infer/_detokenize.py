"""Incremental detokenization: turn a growing list of token ids into text pieces for streaming.

Design choices:
- With byte fallback, one Chinese character or emoji can span up to four byte tokens, and decoding
  an unfinished byte sequence gives U+FFFD (the replacement character). A piece whose text ends in
  U+FFFD is therefore held back until a later token completes the character. ``flush`` releases
  whatever is held at the end, so a byte sequence that is invalid UTF-8 still comes out, as U+FFFD,
  exactly as a full decode shows it.
- Each step decodes a window that starts one emitted piece back, not only the new ids. Some
  decoders treat the first piece specially (for example by stripping a leading space), and the
  extra piece of context keeps them from dropping text at a piece boundary. The new text is the
  window's text minus the text of its already-emitted part.
- Each push decodes only the ids since the start of the previous piece, so the cost per token does
  not grow with the length of the output.
"""

from __future__ import annotations

from astrai_core import Tokenizer

REPLACEMENT_CHARACTER = "\ufffd"


class IncrementalDetokenizer:
    """Text pieces for ids pushed one at a time; their concatenation equals ``tokenizer.decode(ids)``."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._ids: list[int] = []
        self._window_start = 0  # first id of the decode window: the start of the last emitted piece
        self._emitted = 0  # ids[:emitted] have been turned into text

    def push(self, token_id: int) -> str:
        """Add one id and return the text it completes, or ``""`` if a character is still unfinished."""
        self._ids.append(token_id)
        text, new_text = self._decode_window()
        if text.endswith(REPLACEMENT_CHARACTER):
            return ""
        self._window_start, self._emitted = self._emitted, len(self._ids)
        return new_text

    def flush(self) -> str:
        """Return the held-back text, including U+FFFD for bytes that never formed a character."""
        if self._emitted == len(self._ids):
            return ""
        _, new_text = self._decode_window()
        self._window_start, self._emitted = self._emitted, len(self._ids)
        return new_text

    def _decode_window(self) -> tuple[str, str]:
        """Return the window's text and the part of it after the already-emitted ids."""
        text = self.tokenizer.decode(self._ids[self._window_start :])
        emitted_text = self.tokenizer.decode(self._ids[self._window_start : self._emitted])
        return text, text[len(emitted_text) :]
