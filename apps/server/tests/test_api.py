"""Routes of the JSON API against the fake scheduler: shapes, usage counts, streaming and failures."""

from __future__ import annotations

import json
import logging

MODEL_NAME = "tiny-chat"
FULL_REPLY = "Hello, world! 你好。"


def test_health_reports_the_model(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "model": MODEL_NAME, "max_len": 128}


def test_models_lists_the_one_model(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == [MODEL_NAME]
    assert body["data"][0]["object"] == "model"


def test_chat_completion_shape_and_usage(make_client, hello_request):
    client, scheduler = make_client()
    response = client.post("/v1/chat/completions", json=hello_request)
    assert response.status_code == 200
    body = response.get_json()

    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL_NAME
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": FULL_REPLY},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # The fake template: 3 tokens per message + 2 for the open assistant turn; one token per piece.
    prompt_tokens = 3 + len("Hi") + 2
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 6,
        "total_tokens": prompt_tokens + 6,
    }
    assert scheduler.calls == [(hello_request["messages"], {})]


def test_each_completion_gets_its_own_id(client, hello_request):
    first = client.post("/v1/chat/completions", json=hello_request).get_json()["id"]
    second = client.post("/v1/chat/completions", json=hello_request).get_json()["id"]
    assert first != second


def test_generation_settings_are_passed_under_scheduler_names(make_client, hello_request):
    client, scheduler = make_client()
    settings = {"max_tokens": 2, "temperature": 0, "top_p": 0.9, "top_k": 40, "seed": 7, "model": "any-name"}
    response = client.post("/v1/chat/completions", json={**hello_request, **settings})
    assert response.status_code == 200
    assert scheduler.calls[0][1] == {
        "max_new_tokens": 2,
        "temperature": 0.0,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
    }
    body = response.get_json()
    assert body["model"] == MODEL_NAME
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "Hello, "
    assert body["usage"]["completion_tokens"] == 2


def test_null_settings_count_as_absent(make_client, hello_request):
    client, scheduler = make_client()
    nulls = dict.fromkeys(["max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "model"])
    response = client.post("/v1/chat/completions", json={**hello_request, **nulls})
    assert response.status_code == 200
    assert response.get_json()["object"] == "chat.completion"
    assert scheduler.calls[0][1] == {}


def test_body_without_json_content_type_is_accepted(client, hello_request):
    response = client.post("/v1/chat/completions", data=json.dumps(hello_request))
    assert response.status_code == 200


def test_stream_sends_role_content_finish_then_done(client, hello_request, parse_events):
    response = client.post("/v1/chat/completions", json={**hello_request, "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.mimetype_params.get("charset") == "utf-8"
    events = parse_events(response.data)

    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(chunk["model"] == MODEL_NAME for chunk in chunks)
    choices = [chunk["choices"][0] for chunk in chunks]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    contents = [choice["delta"]["content"] for choice in choices[1:-1]]
    assert contents == ["Hello", ", ", "world", "! ", "你好", "。"]
    assert choices[-1]["delta"] == {}
    assert [choice["finish_reason"] for choice in choices] == [None] * (len(choices) - 1) + ["stop"]


def test_stream_max_tokens_finishes_with_length(client, hello_request, parse_events):
    response = client.post("/v1/chat/completions", json={**hello_request, "stream": True, "max_tokens": 3})
    choices = [event["choices"][0] for event in parse_events(response.data)[:-1]]
    assert "".join(choice["delta"].get("content", "") for choice in choices) == "Hello, world"
    assert choices[-1]["finish_reason"] == "length"


def test_chinese_round_trip(make_client):
    client, _ = make_client(echo=True)
    text = "你好，世界！今天天气怎么样？"
    request = {"messages": [{"role": "user", "content": text}]}

    response = client.post("/v1/chat/completions", json=request)
    assert response.get_json()["choices"][0]["message"]["content"] == text
    assert text.encode("utf-8") in response.data

    streamed = client.post("/v1/chat/completions", json={**request, "stream": True})
    assert text.encode("utf-8") in streamed.data
    payload = streamed.data.decode("utf-8").split("\n\n")[1].removeprefix("data: ")
    assert json.loads(payload)["choices"][0]["delta"]["content"] == text


def test_generation_error_is_a_plain_json_500(make_client, hello_request):
    client, _ = make_client(error=RuntimeError("secret internal detail"))
    response = client.post("/v1/chat/completions", json=hello_request)
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["type"] == "server_error"
    assert "secret internal detail" not in error["message"]
    assert "server log" in error["message"]


def test_stream_start_failure_is_json_500(make_client, hello_request):
    client, _ = make_client(error=RuntimeError("boom"))
    response = client.post("/v1/chat/completions", json={**hello_request, "stream": True})
    assert response.status_code == 500
    assert response.get_json()["error"]["type"] == "server_error"


def test_stream_error_after_start_sends_an_error_event(make_client, hello_request, parse_events):
    client, scheduler = make_client(error=RuntimeError("boom"), fail_after=2)
    response = client.post("/v1/chat/completions", json={**hello_request, "stream": True})
    events = parse_events(response.data)
    assert [event["choices"][0]["delta"] for event in events[:3]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"content": ", "},
    ]
    assert events[-1]["error"]["type"] == "server_error"
    assert "[DONE]" not in events
    assert scheduler.stream_closed


def test_client_disconnect_closes_the_scheduler_stream(make_client, hello_request, caplog):
    client, scheduler = make_client()
    response = client.post("/v1/chat/completions", json={**hello_request, "stream": True}, buffered=False)
    body = iter(response.response)
    next(body)  # the role chunk
    next(body)  # the first content chunk
    assert not scheduler.stream_closed
    with caplog.at_level(logging.INFO, logger="astrai_server"):
        response.close()
    assert scheduler.stream_closed
    assert "client disconnected after 1 completion tokens" in caplog.text
