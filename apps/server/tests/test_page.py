"""The chat page and its static files."""

from __future__ import annotations


def test_page_has_the_chat_form_and_assets(client):
    response = client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<meta charset="utf-8">' in html
    for element_id in ("prompt", "send", "stop", "temperature", "max-tokens"):
        assert f'id="{element_id}"' in html
    assert "/static/chat.js" in html
    assert "/static/chat.css" in html
    assert "tiny-chat" in html
    # No external CDN: every script and stylesheet is served by this app.
    assert "http://" not in html
    assert "https://" not in html


def test_static_files_are_served(client):
    script = client.get("/static/chat.js")
    assert script.status_code == 200
    source = script.get_data(as_text=True)
    assert "AbortController" in source
    assert "getReader" in source
    assert "innerHTML" not in source
    script.close()
    stylesheet = client.get("/static/chat.css")
    assert stylesheet.status_code == 200
    stylesheet.close()


def test_page_asks_for_key_only_when_required(make_client):
    open_client, _ = make_client()
    assert 'id="api-key"' not in open_client.get("/").get_data(as_text=True)
    locked_client, _ = make_client({"ASTRAI_API_KEY": "secret"})
    html = locked_client.get("/").get_data(as_text=True)
    assert 'id="api-key"' in html
    assert "secret" not in html


def test_script_sends_bearer_key(client):
    script = client.get("/static/chat.js")
    source = script.get_data(as_text=True)
    script.close()
    assert "Authorization = `Bearer ${apiKeyInput.value}`" in source
