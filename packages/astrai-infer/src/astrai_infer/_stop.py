"""Stop strings: end generation at a string that may span several tokens, and stream around it.

Design choices:
- Matching runs on decoded text, not on ids, because one string has many tokenisations and its
  first or last character may share a token with other text.
- Text comes from ``IncrementalDetokenizer``, so it never contains half a UTF-8 character.
- Text is released only once it can no longer be the start of a stop string: the longest tail that
  is a prefix of some stop string is held back. A stop string can then only begin inside the
  held-back text, so each push searches only that, and a stream never shows text that a later
  token turns into a stop string.
- On a match everything from the stop string on is dropped, and the match is reported so the
  decoding loop can end the row.
"""

from __future__ import annotations

from collections.abc import Sequence

from astrai_core import Tokenizer

from ._detokenize import IncrementalDetokenizer


class StopStringText:
    """Text of one generated sequence, cut before the first stop string.

    ``push`` and ``finish`` return the text that is safe to show; their concatenation is the
    sequence's text up to (not including) the first stop string, or all of it when none appears.

    Args:
        tokenizer: Decodes the ids.
        stop: The stop strings; an empty sequence makes this a plain incremental detokenizer.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stop = tuple(stop)
        self.stopped = False
        self._held = ""  # decoded text not yet released: possibly the start of a stop string
        self._released: list[str] = []

    @property
    def text(self) -> str:
        """Everything released so far."""
        return "".join(self._released)

    def push(self, token_id: int) -> str:
        """Add one generated id and return the text it releases (often ``""``)."""
        if self.stopped:
            return ""
        self._held += self.detokenizer.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        """Release the rest at the end of generation, decoding any unfinished bytes as U+FFFD."""
        if self.stopped:
            return ""
        self._held += self.detokenizer.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        matches = [index for index in (self._held.find(text) for text in self.stop) if index >= 0]
        if matches:
            self.stopped = True
            piece, self._held = self._held[: min(matches)], ""
        else:
            keep = 0 if final else self._prefix_tail_length()
            piece, self._held = self._held[: len(self._held) - keep], self._held[len(self._held) - keep :]
        self._released.append(piece)
        return piece

    def _prefix_tail_length(self) -> int:
        """Length of the longest tail of the held text that is a proper prefix of a stop string."""
        longest = 0
        for text in self.stop:
            for length in range(min(len(text) - 1, len(self._held)), longest, -1):
                if self._held.endswith(text[:length]):
                    longest = length
                    break
        return longest
