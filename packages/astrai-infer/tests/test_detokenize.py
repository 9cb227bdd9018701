import random

from astrai_infer._detokenize import REPLACEMENT_CHARACTER, IncrementalDetokenizer


def stream_text(tokenizer, ids: list[int]) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer)
    return [detokenizer.push(token_id) for token_id in ids] + [detokenizer.flush()]


def test_byte_tokens_are_joined_before_they_are_emitted(tokenizer, byte_heavy_text):
    ids = tokenizer.encode(byte_heavy_text)
    byte_tokens = [i for i in ids if tokenizer.id_to_piece(i).startswith("<0x")]
    assert len(byte_tokens) >= 10, "the test text should need byte fallback"

    pieces = stream_text(tokenizer, ids)
    assert "".join(pieces) == byte_heavy_text
    assert not any(REPLACEMENT_CHARACTER in piece for piece in pieces)
    assert pieces.count("") > len(byte_tokens) // 2  # held back while a character was unfinished


def test_random_ids_join_to_full_decode(tokenizer):
    random_ids = random.Random(0)
    for _ in range(200):
        ids = [random_ids.randrange(tokenizer.vocab_size) for _ in range(random_ids.randrange(1, 30))]
        assert "".join(stream_text(tokenizer, ids)) == tokenizer.decode(ids)


def test_invalid_bytes_come_out_on_flush(tokenizer):
    lone_lead_byte = tokenizer.sp.piece_to_id("<0xE4>")
    detokenizer = IncrementalDetokenizer(tokenizer)
    assert detokenizer.push(lone_lead_byte) == ""
    assert detokenizer.flush() == REPLACEMENT_CHARACTER
    assert detokenizer.flush() == ""


def test_leading_spaces_survive_piece_boundaries(tokenizer):
    text = "  two  spaces,  then  more "
    assert "".join(stream_text(tokenizer, tokenizer.encode(text))) == text
