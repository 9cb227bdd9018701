"""Errors Flask raises before a view runs: JSON on API paths, HTML pages elsewhere."""

from __future__ import annotations


def test_unknown_api_route_is_json_404(client):
    response = client.get("/v1/embeddings")
    assert response.status_code == 404
    assert response.get_json()["error"]["type"] == "invalid_request_error"


def test_wrong_method_is_json_405_with_allow_header(client):
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.is_json
    assert "POST" in response.headers["Allow"]


def test_unknown_page_route_keeps_the_html_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"


def test_body_over_the_size_cap_is_json_413(make_client):
    client, scheduler = make_client()
    content = "x" * (1024 * 1024 + 1)
    response = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})
    assert response.status_code == 413
    error = response.get_json()["error"]
    assert error["type"] == "invalid_request_error"
    assert str(1024 * 1024) in error["message"]
    assert scheduler.calls == []
