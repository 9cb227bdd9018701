"""Bad chat completion requests: each is a 400 naming the field, never a 500."""

from __future__ import annotations

import json

import pytest

HELLO = [{"role": "user", "content": "Hi"}]

BAD_FIELDS = [
    ({}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "Hi"}, "messages"),
    ({"messages": ["Hi"]}, "messages[0]"),
    ({"messages": [*HELLO, {"role": "robot", "content": "beep"}]}, "messages[1].role"),
    ({"messages": [{"content": "Hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": ["Hi"]}]}, "messages[0].content"),
    ({"messages": HELLO, "model": 3}, "model"),
    ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": -5}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": 1.5}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": "10"}, "max_tokens"),
    ({"messages": HELLO, "max_tokens": True}, "max_tokens"),
    ({"messages": HELLO, "temperature": -0.1}, "temperature"),
    ({"messages": HELLO, "temperature": "hot"}, "temperature"),
    ({"messages": HELLO, "top_p": 0}, "top_p"),
    ({"messages": HELLO, "top_p": 1.01}, "top_p"),
    ({"messages": HELLO, "top_p": -0.5}, "top_p"),
    ({"messages": HELLO, "top_k": -1}, "top_k"),
    ({"messages": HELLO, "top_k": 2.5}, "top_k"),
    ({"messages": HELLO, "seed": -1}, "seed"),
    ({"messages": HELLO, "seed": "42"}, "seed"),
    ({"messages": HELLO, "stream": "yes"}, "stream"),
    ({"messages": HELLO, "max_tokens": 100000}, "max_tokens"),
    ({"messages": HELLO, "max_completion_tokens": 0}, "max_completion_tokens"),
    ({"messages": HELLO, "min_p": 1}, "min_p"),
    ({"messages": HELLO, "presence_penalty": 3}, "presence_penalty"),
    ({"messages": HELLO, "frequency_penalty": "x"}, "frequency_penalty"),
    ({"messages": HELLO, "repetition_penalty": 0}, "repetition_penalty"),
    ({"messages": HELLO, "stop": 5}, "stop"),
    ({"messages": HELLO, "stop": [""]}, "stop"),
    ({"messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": HELLO, "n": 0}, "n"),
    ({"messages": HELLO, "n": 100}, "n"),
    ({"messages": HELLO, "stream_options": []}, "stream_options"),
    ({"messages": HELLO, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ({"messages": HELLO, "logprobs": "yes"}, "logprobs"),
    ({"messages": HELLO, "top_logprobs": 2}, "top_logprobs"),
    ({"messages": HELLO, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
]


@pytest.mark.parametrize(("body", "param"), BAD_FIELDS, ids=[param for _, param in BAD_FIELDS])
def test_bad_field_is_400_naming_it(make_client, body, param):
    client, scheduler = make_client()
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None
    assert error["message"].startswith(param + ":")
    assert scheduler.calls == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        '{"messages": "\xff"}'.encode("latin-1"),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["malformed", "empty", "not-utf8", "deeply-nested"],
)
def test_unparsable_body_is_400(client, body):
    response = client.post("/v1/chat/completions", data=body, content_type="application/json")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] is None
    assert "JSON" in error["message"]


@pytest.mark.parametrize("body", [b"[]", b'"Hi"', b"null", b"3"])
def test_body_that_is_not_an_object_is_400(client, body):
    response = client.post("/v1/chat/completions", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "JSON object" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_temperature_is_400(client, value):
    # json.dumps would reject these values, so write the body by hand.
    body = '{"messages": [{"role": "user", "content": "Hi"}], "temperature": ' + value + "}"
    response = client.post("/v1/chat/completions", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "temperature"


def test_conversation_longer_than_the_context_is_400(make_client):
    client, scheduler = make_client(max_len=32)
    body = {"messages": [{"role": "user", "content": "x" * 40}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "messages"
    assert "max_len is 32" in error["message"]
    assert scheduler.calls == []


def test_stream_request_is_validated_before_streaming(client):
    response = client.post("/v1/chat/completions", json={"messages": [], "stream": True})
    assert response.status_code == 400
    assert response.mimetype == "application/json"


def test_system_and_assistant_roles_are_accepted(make_client):
    client, scheduler = make_client()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "你好", "name": "ignored extra field"},
    ]
    response = client.post("/v1/chat/completions", data=json.dumps({"messages": messages}))
    assert response.status_code == 200
    assert scheduler.calls[0][0][-1] == {"role": "user", "content": "你好"}


BAD_COMPLETIONS = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "Hi", "logprobs": 6}, "logprobs"),
    ({"prompt": "Hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x" * 200}, "prompt"),
]


@pytest.mark.parametrize(("body", "param"), BAD_COMPLETIONS, ids=[param for _, param in BAD_COMPLETIONS])
def test_bad_completions_field_is_400_naming_it(make_client, body, param):
    client, scheduler = make_client()
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param
    assert response.get_json()["error"]["type"] == "invalid_request_error"
    assert scheduler.calls == []
