"""SentencePiece tokenizer with chat markers, trained on the user's own text.

Design choices:
- BPE with byte fallback: a character missing from the vocabulary becomes its UTF-8 bytes, so no
  Chinese character or emoji is ever mapped to an unknown token.
- Identity normalisation, no dummy prefix and no whitespace collapsing, so
  ``decode(encode(text)) == text`` for any string: full-width punctuation, tabs, newlines and
  runs of spaces survive unchanged.
- The chat markers ``<|im_start|>`` and ``<|im_end|>`` are SentencePiece *control* symbols: encoding
  text never produces them, so a user who types a marker inside a message gets ordinary text, and
  only ``apply_chat_template`` can insert the real tokens.
- The chat format follows ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHAT_ROLES = ("system", "user", "assistant")


def detect_language(text: str) -> str:
    """Return ``"zh"`` when CJK ideographs make up at least 10% of the non-space characters, else ``"en"``."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return "en"
    cjk = sum(1 for c in visible if _is_cjk(c))
    return "zh" if cjk / len(visible) >= 0.1 else "en"


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF


class Tokenizer:
    """Text to token ids and back, plus the chat template."""

    def __init__(self, model: str | os.PathLike | bytes):
        """Load a SentencePiece model from a ``.model`` file path or from its serialised bytes."""
        if isinstance(model, bytes):
            self._proto = model
        else:
            path = Path(model)
            if not path.is_file():
                raise FileNotFoundError(
                    f"tokenizer model {path} not found; train one with "
                    "'astrai-data tokenizer train CORPUS -o TOKENIZER.model'"
                )
            self._proto = path.read_bytes()
        source = "tokenizer model" if isinstance(model, bytes) else f"tokenizer model {model}"
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as error:
            raise ValueError(
                f"{source} is not a valid SentencePiece model ({error}); pass the .model file written by "
                "'astrai-data tokenizer train'"
            ) from None
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()
        self.im_start_id = self.sp.piece_to_id(IM_START)
        self.im_end_id = self.sp.piece_to_id(IM_END)
        if self.im_start_id == self.sp.unk_id() or self.im_end_id == self.sp.unk_id() or self.pad_id < 0:
            raise ValueError(
                "tokenizer model lacks the pad or chat marker tokens AstrAI needs; "
                "train it with Tokenizer.train or 'astrai-data tokenizer train'"
            )

    # Training

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        output_path: str | os.PathLike,
        vocab_size: int = 8192,
        max_sentences: int = 300_000,
        num_threads: int | None = None,
        seed_text: str = "",
    ) -> Tokenizer:
        """Train a BPE model on ``texts`` (documents; each is split into lines) and save it.

        ``max_sentences`` caps how many lines SentencePiece samples, which bounds training time and
        memory on large corpora. ``seed_text`` is extra text always included in training.
        """
        if vocab_size < 300:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: 256 byte tokens and 6 special tokens come first; "
                "use at least 300 (4096 or more for real text)"
            )
        output_path = Path(output_path)

        def lines() -> Iterator[str]:
            for text in [seed_text, *texts] if seed_text else texts:
                for line in text.split("\n"):
                    if line.strip():
                        yield line

        with tempfile.TemporaryDirectory() as tmp:
            prefix = os.path.join(tmp, "sp")
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines(),
                model_prefix=prefix,
                model_type="bpe",
                vocab_size=vocab_size,
                byte_fallback=True,
                character_coverage=0.9995,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                max_sentence_length=16384,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=3,
                control_symbols=[IM_START, IM_END],
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=2,
            )
            proto = Path(prefix + ".model").read_bytes()
        tokenizer = cls(proto)
        tokenizer.save(output_path)
        return tokenizer

    def save(self, path: str | os.PathLike) -> None:
        """Write the SentencePiece model file (atomically, through a temporary name)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self._proto)
        os.replace(tmp, path)

    @property
    def model_proto(self) -> bytes:
        return self._proto

    # Encoding

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation: end of text and end of a chat turn."""
        return frozenset({self.eos_id, self.im_end_id})

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        try:
            ids = self.sp.encode(text)
        except (TypeError, UnicodeEncodeError, RuntimeError):
            # SentencePiece's binding raises RuntimeError for strings it cannot convert to UTF-8.
            raise ValueError(_invalid_text_message(text)) from None
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """Encode many texts using SentencePiece's own threads."""
        return self.sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Turn ids back into text; control tokens (bos, eos, pad, chat markers) decode to nothing."""
        return self.sp.decode(list(ids))

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    def chars_per_token(self, texts: Iterable[str]) -> float:
        """Compression of ``texts``: characters per token (higher means the vocabulary fits better)."""
        chars = tokens = 0
        for text in texts:
            chars += len(text)
            tokens += len(self.sp.encode(text))
        return chars / max(tokens, 1)

    # Chat

    def apply_chat_template(
        self, messages: Sequence[dict], add_generation_prompt: bool = False
    ) -> list[int]:
        """Encode a conversation; with ``add_generation_prompt`` end with an open assistant turn."""
        ids, _ = self.encode_chat(messages)
        if add_generation_prompt:
            ids += [self.im_start_id, *self.encode("assistant\n")]
        return ids

    def encode_chat(self, messages: Sequence[dict], source: str = "messages") -> tuple[list[int], list[int]]:
        """Encode a conversation and return ``(ids, loss_mask)``.

        The loss mask is 1 on the tokens of every assistant message and its closing ``<|im_end|>``,
        and 0 on everything else (the markers, role names, and other roles' content).
        """
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError(f"{source}: expected a non-empty list of {{'role', 'content'}} objects")
        ids: list[int] = [self.bos_id]
        mask: list[int] = [0]
        for index, message in enumerate(messages):
            role, content = _check_message(message, f"{source}[{index}]")
            header = [self.im_start_id, *self.encode(role + "\n")]
            body = [*self.encode(content), self.im_end_id]
            newline = self.encode("\n")
            learn = 1 if role == "assistant" else 0
            ids += header + body + newline
            mask += [0] * len(header) + [learn] * len(body) + [0] * len(newline)
        return ids, mask


def _invalid_text_message(text: object) -> str:
    if not isinstance(text, str):
        return f"text to encode must be a string, got {type(text).__name__}"
    for position, char in enumerate(text):
        if 0xD800 <= ord(char) <= 0xDFFF:
            return (
                f"text contains a lone UTF-16 surrogate (U+{ord(char):04X}) at character {position}, which is "
                "not valid Unicode; fix the text's encoding"
            )
    return "text cannot be encoded as UTF-8; fix its encoding"


def _check_message(message: object, where: str) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"{where}: expected an object with 'role' and 'content', got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in CHAT_ROLES:
        raise ValueError(f"{where}.role: expected one of {list(CHAT_ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise ValueError(f"{where}.content: expected a string, got {type(content).__name__}")
    return role, content
