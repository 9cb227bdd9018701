"""The scheduler against ``Generator``: the same tokens per request, whatever else runs beside it."""

from __future__ import annotations

import threading
import time

import pytest

from astrai_infer import GenerationConfig, Scheduler

PROMPTS = [
    "The quick",
    "今天天气很好，我们去公园散步吧。我喜欢读书和写代码",
    "Hi",
    "Tokens are pieces of text, and the model",
    "A",
    "Mixed text: 我们 like 编程",
]
LENGTHS = [30, 5, 60, 12, 40, 20]


@pytest.fixture
def scheduler(model, tokenizer):
    with Scheduler(model, tokenizer, max_batch_size=4) as running:
        yield running


def test_greedy_requests_submitted_at_different_times_match_the_generator(scheduler, generator):
    expected = [generator.complete(p, temperature=0, max_new_tokens=n) for p, n in zip(PROMPTS, LENGTHS)]
    results = [None] * len(PROMPTS)

    def client(index: int) -> None:
        time.sleep(0.003 * index)  # join a batch that is already decoding
        handle = scheduler.submit(PROMPTS[index], temperature=0, max_new_tokens=LENGTHS[index])
        results[index] = handle.result()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for want, got in zip(expected, results):
        assert got.token_ids == want.token_ids
        assert got.text == want.text
        assert (got.prompt_tokens, got.finish_reason) == (want.prompt_tokens, want.finish_reason)


def test_each_request_keeps_its_own_sampling_settings(scheduler, generator):
    configs = [
        GenerationConfig(temperature=0.9, top_k=20, seed=1, max_new_tokens=25),
        GenerationConfig(temperature=0, repetition_penalty=1.3, presence_penalty=0.5, max_new_tokens=25),
        GenerationConfig(temperature=1.2, top_p=0.8, min_p=0.05, seed=7, frequency_penalty=1.0, max_new_tokens=25),
        GenerationConfig(temperature=0, logprobs=True, top_logprobs=2, max_new_tokens=10),
    ]
    prompts = PROMPTS[: len(configs)]
    expected = [generator.complete(prompt, config) for prompt, config in zip(prompts, configs)]
    handles = [scheduler.submit(prompt, config) for prompt, config in zip(prompts, configs)]
    for want, handle in zip(expected, handles):
        got = handle.result()
        assert got.token_ids == want.token_ids
        assert got.text == want.text
    assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    assert [[pair[0] for pair in row] for row in got.top_logprobs] == [
        [pair[0] for pair in row] for row in want.top_logprobs
    ]


def test_stream_chunks_join_to_the_completion_and_hold_back_stop_strings(scheduler, generator):
    reference = generator.generate(PROMPTS[0], temperature=0, max_new_tokens=30)
    stop = reference[len(reference) // 2 : len(reference) // 2 + 3]
    assert stop.strip(), "the reference text is too short for this test"
    want = generator.complete(PROMPTS[0], temperature=0, max_new_tokens=30, stop=[stop])

    chunks = list(scheduler.submit(PROMPTS[0], temperature=0, max_new_tokens=30, stop=[stop]))
    assert "".join(chunk.text for chunk in chunks) == want.text
    assert stop not in want.text
    assert want.finish_reason == "stop"
    assert [chunk.finish_reason for chunk in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == "stop"
    assert [chunk.completion_tokens for chunk in chunks] == list(range(1, len(chunks) + 1))


def test_sequences_share_forward_passes_and_short_ones_finish_first(scripted, tokenizer):
    model = scripted([50] * 200, max_len=200).model
    with Scheduler(model, tokenizer, max_batch_size=8) as scheduler:
        long = scheduler.submit([1, 2, 3], max_new_tokens=190)
        short = [scheduler.submit([1, 2], max_new_tokens=5) for _ in range(3)]
        for handle in short:
            assert handle.result().finish_reason == "length"
        assert long._events.qsize() < 190, "the short requests waited for the long one"
        assert len(long.result().token_ids) == 190
    assert max(model.batch_sizes) >= 3


def test_a_stop_id_ends_only_its_own_request(scripted, tokenizer):
    stop_id = tokenizer.eos_id
    model = scripted([70, 70, 70, 70, stop_id, 70, 70, 70, 70, 70, 70, 70], max_len=64).model
    with Scheduler(model, tokenizer) as scheduler:
        early = scheduler.submit([1, 2], max_new_tokens=20)  # positions 2, 3 then the stop id at 4
        late = scheduler.submit([1, 2, 3, 4, 5], max_new_tokens=4)  # positions 5.. never see it
        assert early.result().token_ids == [70, 70]
        assert early.result().finish_reason == "stop"
        assert late.result().token_ids == [70, 70, 70, 70]


def test_cancel_frees_the_row_and_ends_the_stream(scripted, tokenizer):
    model = scripted([50] * 500, max_len=500).model
    with Scheduler(model, tokenizer) as scheduler:
        handle = scheduler.submit([1], max_new_tokens=400)
        next(handle)
        handle.close()
        chunks = list(handle)
        assert chunks[-1].finish_reason == "cancelled"
        assert len(handle.token_ids) < 400
        deadline = time.time() + 5
        while scheduler.stats().running and time.time() < deadline:
            time.sleep(0.01)
        stats = scheduler.stats()
        assert (stats.running, stats.cancelled) == (0, 1)


def test_bad_prompts_and_settings_raise_at_submit(scheduler):
    with pytest.raises(ValueError, match="max_len"):
        scheduler.submit(list(range(1, 200)))
    with pytest.raises(ValueError, match="empty list"):
        scheduler.submit([])
    with pytest.raises(ValueError, match="temperature"):
        scheduler.submit("hi", temperature=-1)
    assert scheduler.stats().submitted == 0


def test_shutdown_fails_queued_requests_and_refuses_new_ones(scripted, tokenizer):
    model = scripted([50] * 500, max_len=500).model
    scheduler = Scheduler(model, tokenizer, max_batch_size=1)
    running = scheduler.submit([1], max_new_tokens=400)
    queued = scheduler.submit([1], max_new_tokens=400)
    scheduler.shutdown()
    for handle in (running, queued):
        with pytest.raises(RuntimeError, match="shut down"):
            handle.result()
    with pytest.raises(RuntimeError, match="shut down"):
        scheduler.submit([1])


def test_a_failing_step_fails_its_requests_and_the_scheduler_keeps_serving(scripted, tokenizer):
    model = scripted([50] * 64, max_len=64).model
    original = model.forward
    calls = {"count": 0}

    def flaky(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    model.forward = flaky
    with Scheduler(model, tokenizer) as scheduler:
        with pytest.raises(RuntimeError, match="injected failure"):
            scheduler.submit([1], max_new_tokens=10).result()
        assert scheduler.submit([1], max_new_tokens=3).result().token_ids == [50, 50, 50]
        assert scheduler.stats().failed == 1


def test_max_batch_size_is_checked(model, tokenizer):
    with pytest.raises(ValueError, match="max_batch_size"):
        Scheduler(model, tokenizer, max_batch_size=0)


def test_encode_applies_the_chat_template(scheduler, tokenizer):
    messages = [{"role": "user", "content": "你好"}]
    assert scheduler.encode(messages) == tokenizer.apply_chat_template(messages, add_generation_prompt=True)
