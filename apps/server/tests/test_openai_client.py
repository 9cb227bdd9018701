"""The official ``openai`` client against a real server on 127.0.0.1 serving a tiny random model.

The server runs in a thread (Werkzeug's threaded ``make_server``) with the real scheduler, so these
tests cover the whole path: HTTP, request checks, continuous batching and OpenAI's wire format.
"""

from __future__ import annotations

import threading

import pytest

openai = pytest.importorskip("openai", reason="the openai client is a test dependency: pip install openai")

from astrai_infer import Generator  # noqa: E402
from astrai_server import create_app  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

API_KEY = "test-key"
HELLO = [{"role": "user", "content": "你好, tell me something."}]


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    path, _ = tiny_checkpoint
    app = create_app({"ASTRAI_CHECKPOINT": str(path), "ASTRAI_API_KEY": API_KEY})
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    thread.join(5)
    app.extensions["astrai"].scheduler.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_chat_completion_matches_the_generator(client, tiny_checkpoint):
    path, _ = tiny_checkpoint
    expected = Generator.from_checkpoint(path).complete(HELLO, temperature=0, max_new_tokens=12)
    reply = client.chat.completions.create(model="any", messages=HELLO, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == len(expected.token_ids)
    assert reply.model == "tiny-random"


def test_streamed_chat_joins_to_the_completion_and_reports_usage(client):
    settings = {"model": "any", "messages": HELLO, "max_completion_tokens": 15, "seed": 3,
                "presence_penalty": 0.5, "frequency_penalty": 0.2,
                "extra_body": {"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.1}}
    whole = client.chat.completions.create(**settings)
    chunks = list(client.chat.completions.create(**settings, stream=True, stream_options={"include_usage": True}))
    content = [chunk for chunk in chunks if chunk.choices]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in content) == whole.choices[0].message.content
    assert [chunk.choices[0].finish_reason for chunk in content[:-1]] == [None] * (len(content) - 1)
    assert content[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_choices_stop_and_logprobs(client):
    reply = client.chat.completions.create(
        model="any", messages=HELLO, n=3, max_tokens=8, temperature=1.0, seed=5, logprobs=True, top_logprobs=2, stop=["\n"]
    )
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    for choice in reply.choices:
        assert "\n" not in choice.message.content
        assert all(len(entry.top_logprobs) == 2 for entry in choice.logprobs.content)
        assert all(entry.logprob <= 0 for entry in choice.logprobs.content)
    assert reply.usage.completion_tokens == sum(len(choice.logprobs.content) for choice in reply.choices)


def test_streamed_n_choices_each_end_once(client):
    stream = client.chat.completions.create(model="any", messages=HELLO, n=2, max_tokens=6, stream=True)
    finishes = [(c.choices[0].index, c.choices[0].finish_reason) for c in stream if c.choices[0].finish_reason]
    assert sorted(index for index, _ in finishes) == [0, 1]


def test_text_completion_whole_and_streamed(client):
    whole = client.completions.create(model="any", prompt="The quick brown", max_tokens=10, temperature=0,
                                      logprobs=2)
    assert len(whole.choices[0].logprobs.tokens) == whole.usage.completion_tokens
    stream = client.completions.create(model="any", prompt="The quick brown", max_tokens=10, temperature=0,
                                       stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == whole.choices[0].text


def test_models_lists_the_checkpoint(client):
    assert [model.id for model in client.models.list().data] == ["tiny-random"]


def test_bad_request_raises_the_clients_error_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="any", messages=HELLO, max_tokens=0)
    assert caught.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="any", messages=[{"role": "robot", "content": "x"}])


def test_wrong_api_key_is_401(server):
    wrong = openai.OpenAI(base_url=f"{server[1]}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_disconnect_cancels_generation_and_metrics_count_it(server, client):
    app, base_url = server
    scheduler = app.extensions["astrai"].scheduler
    before = scheduler.stats().cancelled
    stream = client.chat.completions.create(model="any", messages=HELLO, max_tokens=200, temperature=1.0, stream=True)
    next(iter(stream))
    stream.close()
    deadline = threading.Event()
    for _ in range(200):
        if scheduler.stats().cancelled > before:
            break
        deadline.wait(0.05)
    assert scheduler.stats().cancelled == before + 1

    import urllib.request

    request = urllib.request.Request(f"{base_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    assert 'astrai_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
    assert "astrai_queue_depth 0" in text
    assert "astrai_time_to_first_token_seconds_count" in text
