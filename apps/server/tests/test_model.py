"""Finding the checkpoint, and the server's behaviour when there is no model to load."""

from __future__ import annotations

import logging
from pathlib import Path

from astrai_server import create_app, model


def test_default_checkpoint_is_demo_output():
    repo_root = Path(__file__).resolve().parents[3]
    assert (repo_root / "apps" / "server" / "pyproject.toml").is_file()
    assert model.DEFAULT_CHECKPOINT == repo_root / "runs" / "demo" / "model"


def test_config_wins_over_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRAI_CHECKPOINT", str(tmp_path / "from-env"))
    app = create_app({"TESTING": True, "ASTRAI_CHECKPOINT": str(tmp_path / "from-config")})
    assert app.extensions[model.EXTENSION_KEY].checkpoint == tmp_path / "from-config"


def test_environment_wins_over_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ASTRAI_CHECKPOINT", str(tmp_path / "from-env"))
    app = create_app({"TESTING": True})
    assert app.extensions[model.EXTENSION_KEY].checkpoint == tmp_path / "from-env"


def test_health_is_503_without_a_model(no_model_client):
    response = no_model_client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "no_model"
    assert body["checkpoint"].endswith("model")
    assert "bash tools/demo.sh" in body["message"]
    assert "ASTRAI_CHECKPOINT=" in body["message"]


def test_api_is_503_without_a_model(no_model_client):
    for response in (
        no_model_client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]}),
        no_model_client.get("/v1/models"),
    ):
        assert response.status_code == 503
        error = response.get_json()["error"]
        assert error["code"] == "model_not_loaded"
        assert "bash tools/demo.sh" in error["message"]


def test_page_explains_how_to_get_a_model(no_model_client):
    response = no_model_client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "No model is loaded" in html
    assert "bash tools/demo.sh" in html
    assert "ASTRAI_CHECKPOINT=/path/to/checkpoint flask --app apps/server run" in html
    assert 'id="prompt"' not in html


def test_missing_checkpoint_is_logged(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="astrai_server"):
        create_app({"TESTING": True, "ASTRAI_CHECKPOINT": str(tmp_path / "nowhere")})
    assert str(tmp_path / "nowhere") in caplog.text


def test_unloadable_checkpoint_starts_without_a_model(tmp_path, caplog):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with caplog.at_level(logging.ERROR, logger="astrai_server"):
        app = create_app({"TESTING": True, "ASTRAI_CHECKPOINT": str(broken)})
    assert "could not load the checkpoint" in caplog.text
    response = app.test_client().get("/health")
    assert response.status_code == 503
    assert "Could not load the checkpoint" in response.get_json()["message"]
