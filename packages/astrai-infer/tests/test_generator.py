import random
import threading

import pytest
import torch

from astrai_core import ModelConfig, Transformer, save_checkpoint
from astrai_infer import Completion, GenerationConfig, Generator
from astrai_infer._detokenize import REPLACEMENT_CHARACTER

GREEDY = GenerationConfig(temperature=0, max_new_tokens=24)
PROMPTS = [
    "The quick brown fox",
    "今天天气很好，",
    "a",
    "Mixed text: 我们 like 编程 and the model predicts the next one. 😀",
    [1, 100, 200, 300],
]


def greedy_without_cache(model, ids: list[int], max_new_tokens: int, stop_ids) -> list[int]:
    """Greedy decoding that recomputes the whole sequence at every step."""
    ids, generated = list(ids), []
    for _ in range(min(max_new_tokens, model.config.max_len - len(ids))):
        with torch.no_grad():
            next_id = int(model(torch.tensor([ids]))["logits"][0, -1].argmax())
        if next_id in stop_ids:
            break
        ids.append(next_id)
        generated.append(next_id)
    return generated


# Greedy decoding and its equivalents


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_full_recompute(generator, model, tokenizer, prompt):
    completion = generator.complete(prompt, GREEDY)
    ids = prompt if isinstance(prompt, list) else tokenizer.encode(prompt, add_bos=True)
    assert completion.token_ids == greedy_without_cache(model, ids, 24, tokenizer.stop_ids)
    assert completion.prompt_tokens == len(ids)
    assert completion.text == tokenizer.decode(completion.token_ids)


GENERATOR_PATHS = [{"fast": False}, {"fast": True, "fuse": False}, {"fast": True, "fuse": True}]


@pytest.mark.parametrize("settings", GENERATOR_PATHS)
def test_explicit_head_size_greedy_matches_recompute(tokenizer, settings):
    # Qwen3-style heads: 6 heads of 16 (96 wide) over a 64-wide residual stream that 6 does not divide.
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, dim=64, n_layers=2, n_heads=6, n_kv_heads=2, dim_head=16,
        dim_ffn=128, max_len=128, use_qk_norm=True, tie_embeddings=False,
    )  # fmt: skip
    model = Transformer(config).eval()
    generator = Generator(model, tokenizer, **settings)
    completions = generator.complete_batch(PROMPTS, GREEDY)
    for prompt, completion in zip(PROMPTS, completions):
        ids = prompt if isinstance(prompt, list) else tokenizer.encode(prompt, add_bos=True)
        assert completion.token_ids == greedy_without_cache(model, ids, 24, tokenizer.stop_ids), prompt
        assert generator.complete(prompt, GREEDY) == completion


def test_top_k_one_equals_greedy(generator):
    greedy = generator.generate(PROMPTS[0], GREEDY)
    assert generator.generate(PROMPTS[0], GREEDY, temperature=1.0, top_k=1, seed=3) == greedy
    assert generator.generate(PROMPTS[0], GREEDY, temperature=1.0, top_p=1e-6, seed=4) == greedy


def test_same_seed_same_output(generator):
    config = GenerationConfig(max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.95, seed=11)
    first = generator.complete(PROMPTS[1], config)
    torch.manual_seed(123)  # the global generator must not matter
    assert generator.complete(PROMPTS[1], config) == first
    other_seeds = {tuple(generator.complete(PROMPTS[1], config, seed=seed).token_ids) for seed in range(4)}
    assert len(other_seeds) > 1


def test_overrides_replace_fields_of_the_config(generator):
    completion = generator.complete(PROMPTS[0], GREEDY, max_new_tokens=3)
    assert len(completion.token_ids) <= 3
    assert GREEDY.max_new_tokens == 24
    with pytest.raises(TypeError, match="max_tokens"):
        generator.generate(PROMPTS[0], max_tokens=3)
    with pytest.raises(ValueError, match="GenerationConfig.top_p"):
        generator.generate(PROMPTS[0], top_p=0)


# Batches


@pytest.mark.parametrize("order_seed", [0, 1, 2])
def test_greedy_batch_equals_one_by_one(generator, order_seed):
    prompts = PROMPTS + ["a", "Tokens are pieces of text"]
    random.Random(order_seed).shuffle(prompts)
    alone = [generator.complete(prompt, GREEDY) for prompt in prompts]
    assert generator.complete_batch(prompts, GREEDY) == alone
    assert generator.generate_batch(prompts, GREEDY) == [completion.text for completion in alone]


def test_batch_short_prompt_keeps_full_context(generator, model):
    max_len = model.config.max_len
    long_prompt = [1] + [100 + i % 50 for i in range(max_len - 11)]  # leaves room for 10 tokens
    prompts = [long_prompt, "a", PROMPTS[1]]
    config = GREEDY.replace(max_new_tokens=max_len)
    alone = [generator.complete(prompt, config) for prompt in prompts]
    assert generator.complete_batch(prompts, config) == alone
    assert len(alone[0].token_ids) <= 10


def test_finished_rows_leave_the_batch(scripted, tokenizer):
    # The eos sits at position 5: the 4-token prompt reaches it at step 2, the 2-token prompt at
    # step 4, and the 6-token prompt starts past it, so it runs until max_new_tokens.
    script = [0, 0, 10, 11, 12, tokenizer.eos_id, 13, 14, 15, 16, 17, 18]
    generator = scripted(script)
    completions = generator.complete_batch([[1, 9], [1, 9, 9, 9], [1, 9, 9, 9, 9, 9]], max_new_tokens=5)
    assert [c.token_ids for c in completions] == [[10, 11, 12], [12], [13, 14, 15, 16, 17]]
    assert [c.finish_reason for c in completions] == ["stop", "stop", "length"]
    assert generator.model.batch_sizes == [3, 3, 2, 2, 1]  # the prefill, then one forward per step


def test_empty_batch_and_invalid_batches(generator):
    assert generator.complete_batch([]) == []
    with pytest.raises(ValueError, match="prompts must be a list"):
        generator.generate_batch("one prompt")
    with pytest.raises(ValueError, match=r"prompts\[1\] is an empty list"):
        generator.generate_batch(["fine", []])


# Streaming


@pytest.mark.parametrize("byte_heavy", [False, True])
def test_stream_joins_to_generate_with_the_same_seed(generator, byte_heavy_text, byte_heavy):
    prompt = byte_heavy_text if byte_heavy else PROMPTS[1]
    config = GenerationConfig(max_new_tokens=40, temperature=1.2, seed=5)
    completion = generator.complete(prompt, config)
    chunks = list(generator.stream(prompt, config))
    assert "".join(chunk.text for chunk in chunks) == completion.text
    assert "".join(generator.stream_generate(prompt, config)) == completion.text
    assert [chunk.finish_reason for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == completion.finish_reason
    assert chunks[-1].completion_tokens == len(completion.token_ids)
    assert all(chunk.prompt_tokens == completion.prompt_tokens for chunk in chunks)


def test_stream_never_splits_a_character(scripted, tokenizer, byte_heavy_text):
    prompt = [1, 9]
    reply = tokenizer.encode(byte_heavy_text)
    generator = scripted([0, 0, *reply, tokenizer.eos_id])
    chunks = list(generator.stream(prompt, temperature=1.0, seed=0))
    assert "".join(chunk.text for chunk in chunks) == byte_heavy_text
    assert not any(REPLACEMENT_CHARACTER in chunk.text for chunk in chunks)
    assert [chunk.completion_tokens for chunk in chunks] == [*range(1, len(reply) + 1), len(reply)]
    assert chunks[-1].finish_reason == "stop"
    assert all(piece for piece in generator.stream_generate(prompt))


def test_stream_checks_its_arguments_before_the_first_chunk(generator):
    with pytest.raises(ValueError, match="GenerationConfig.top_k"):
        generator.stream("hi", top_k=-1)


# Stopping


@pytest.mark.parametrize("stop", ["eos_id", "im_end_id"])
def test_stop_id_ends_generation_and_is_left_out(scripted, tokenizer, stop):
    reply = tokenizer.encode("hello")
    generator = scripted([0, 0, *reply, getattr(tokenizer, stop), *tokenizer.encode(" more")])
    assert generator.complete([1, 9], max_new_tokens=20) == Completion("hello", reply, 2, "stop")


def test_length_finish_reasons(scripted, tokenizer):
    generator = scripted([0] * 3 + list(range(100, 170)), max_len=64)
    completion = generator.complete([1, 9, 9], max_new_tokens=4)
    assert (completion.token_ids, completion.finish_reason) == ([100, 101, 102, 103], "length")
    completion = generator.complete([1] * 61, max_new_tokens=100)
    assert (completion.token_ids, completion.finish_reason) == ([158, 159, 160], "length")
    assert completion.prompt_tokens + len(completion.token_ids) == 64


def test_prompt_that_fills_the_context_is_rejected(generator, model):
    max_len = model.config.max_len
    expected = rf"{max_len} tokens long.*max_len is {max_len}.*at most {max_len - 1} tokens"
    with pytest.raises(ValueError, match=expected):
        generator.complete([1] * max_len)
    assert len(generator.complete([1] * (max_len - 1), GREEDY).token_ids) <= 1


# Prompts


def test_chat_messages_prompt(generator, tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    completion = generator.complete(messages, GREEDY)
    assert completion.prompt_tokens == len(ids)
    assert completion == generator.complete(ids, GREEDY)


@pytest.mark.parametrize(
    "prompt, message",
    [
        ([], "empty list"),
        (42, "must be a string"),
        ([1, "two"], "must contain only"),
        ([1, True], "must contain only"),
        ([1, 10**6], "vocabulary has ids 0 to"),
        ([{"role": "robot", "content": "hi"}], "role"),
    ],
)
def test_malformed_prompts_raise_value_error(generator, prompt, message):
    with pytest.raises(ValueError, match=message):
        generator.complete(prompt)


# Construction, devices and threads


def test_from_checkpoint_round_trip(generator, model, tokenizer, tmp_path):
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    loaded = Generator.from_checkpoint(tmp_path / "ckpt", device="cpu", dtype=torch.float32)
    assert loaded.complete(PROMPTS[0], GREEDY) == generator.complete(PROMPTS[0], GREEDY)

    save_checkpoint(tmp_path / "bare", model)
    with pytest.raises(ValueError, match="no tokenizer.model"):
        Generator.from_checkpoint(tmp_path / "bare")


def test_tokenizer_must_fit_the_model(tokenizer, make_model):
    with pytest.raises(ValueError, match="vocab_size"):
        Generator(make_model(tokenizer.vocab_size - 1), tokenizer)


def test_ids_beyond_the_tokenizer_are_never_sampled(tokenizer, make_model):
    padded_vocab = Generator(make_model(tokenizer.vocab_size + 100, seed=1), tokenizer)
    completion = padded_vocab.complete("hi", max_new_tokens=100, temperature=3.0, seed=0)
    assert all(token_id < tokenizer.vocab_size for token_id in completion.token_ids)


def test_lock_queues_other_threads(generator):
    stream = generator.stream(PROMPTS[0], GREEDY)
    next(stream)
    results = []
    worker = threading.Thread(target=lambda: results.append(generator.generate(PROMPTS[0], GREEDY)))
    worker.start()
    worker.join(timeout=0.3)
    assert worker.is_alive()
    assert results == []
    stream.close()
    worker.join(timeout=10)
    assert results == [generator.generate(PROMPTS[0], GREEDY)]


# Sampling controls


def test_stop_string_ends_generation_in_complete_and_stream(scripted, tokenizer):
    reply = tokenizer.encode("你好，世界！很高兴见到你。😀 more text")
    generator = scripted([0, 0, *reply, tokenizer.eos_id])
    completion = generator.complete([1, 9], max_new_tokens=60, stop=["见到", "zzz"])
    assert completion.text == "你好，世界！很高兴"
    assert completion.finish_reason == "stop"
    assert len(completion.token_ids) < len(reply)  # generation ended at the stop string
    chunks = list(generator.stream([1, 9], max_new_tokens=60, stop=["见到"]))
    assert "".join(chunk.text for chunk in chunks) == completion.text
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].completion_tokens == len(completion.token_ids)


def test_stop_strings_in_a_batch_stop_only_their_row(scripted, tokenizer):
    reply = tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    generator = scripted([0, 0, *reply])
    # A prompt of length 2 + j continues with reply[j:]; pick j so its text has no "fox".
    j = next(j for j in range(1, len(reply)) if "fox" not in tokenizer.decode(reply[j:]))
    prompts = [[1, 9], [1] + [9] * (j + 1)]
    completions = generator.complete_batch(prompts, max_new_tokens=len(reply) - j, stop=["fox"])
    assert completions[0].text == "The quick brown "
    assert completions[0].finish_reason == "stop"
    assert completions[1].text == tokenizer.decode(reply[j:])
    assert completions[1].finish_reason == "length"


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.9, "top_k": 20},
        {"temperature": 1.3, "min_p": 0.05, "repetition_penalty": 1.3},
        {"top_p": 0.8, "presence_penalty": 1.0, "frequency_penalty": 0.5},
    ],
)
def test_seed_makes_every_sampling_path_reproducible(generator, settings):
    config = GenerationConfig(max_new_tokens=20, seed=11, **settings)
    first, second = generator.complete(PROMPTS[3], config), generator.complete(PROMPTS[3], config)
    assert first == second
    assert "".join(generator.stream_generate(PROMPTS[3], config)) == first.text


def test_repetition_penalty_changes_greedy_output(generator):
    plain = generator.complete(PROMPTS[0], GREEDY)
    penalised = generator.complete(PROMPTS[0], GREEDY, repetition_penalty=5.0)
    assert penalised.token_ids != plain.token_ids
    counts = [penalised.token_ids.count(token) for token in set(penalised.token_ids)]
    assert max(counts) <= max(plain.token_ids.count(token) for token in set(plain.token_ids))


def test_logprobs_are_the_models_log_softmax(generator, model, tokenizer):
    completion = generator.complete(PROMPTS[0], GREEDY, max_new_tokens=6, logprobs=True, top_logprobs=3)
    ids = tokenizer.encode(PROMPTS[0], add_bos=True) + completion.token_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids]))["logits"][0, :, : tokenizer.vocab_size].float()
    expected = torch.log_softmax(logits, -1)[len(ids) - len(completion.token_ids) - 1 : -1]  # (new, V)
    chosen = expected.gather(1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)
    torch.testing.assert_close(torch.tensor(completion.logprobs), chosen, atol=1e-4, rtol=0)
    assert len(completion.top_logprobs) == len(completion.token_ids)
    for position, alternatives in enumerate(completion.top_logprobs):
        assert alternatives[0][0] == completion.token_ids[position]  # greedy picks the top token
        assert [pair[0] for pair in alternatives] == expected[position].topk(3).indices.tolist()
    chunks = list(generator.stream(PROMPTS[0], GREEDY, max_new_tokens=6, logprobs=True))
    assert [value for chunk in chunks for value in chunk.logprobs or []] == completion.logprobs


def test_logprobs_are_off_by_default(generator):
    completion = generator.complete(PROMPTS[0], GREEDY, max_new_tokens=3)
    assert completion.logprobs is None
    assert completion.top_logprobs is None


def test_truncate_prompt_keeps_the_last_tokens(generator, model):
    max_len = model.config.max_len
    prompt = [1] + [100 + i % 50 for i in range(max_len + 20)]
    with pytest.raises(ValueError, match="truncate_prompt=True"):
        generator.complete(prompt, GREEDY)
    completion = generator.complete(prompt, GREEDY, max_new_tokens=8, truncate_prompt=True)
    assert completion.prompt_tokens == max_len - 8
    assert completion == generator.complete(prompt[-(max_len - 8) :], GREEDY, max_new_tokens=8)
