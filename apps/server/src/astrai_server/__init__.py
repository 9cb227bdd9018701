"""AstrAI server: an OpenAI-compatible chat completions API and a chat page, built with Flask.

``create_app`` is the application factory. Run it from the repository root with
``flask --app apps/server run`` (or ``flask --app astrai_server run`` from anywhere once the package is
installed).

Config keys, each read from ``app.config`` first and then from the environment:

- ``ASTRAI_CHECKPOINT``: checkpoint directory to serve; defaults to ``runs/demo/model`` in the
  repository, where ``tools/demo.sh`` writes its model.
- ``ASTRAI_DEVICE``: torch device to load the model on; defaults to ``cpu``.
- ``ASTRAI_MAX_BATCH_SIZE``: most sequences the scheduler decodes together; defaults to 16.
- ``ASTRAI_API_KEY``: when set, ``/v1/...`` and ``/metrics`` require ``Authorization: Bearer <key>``.

Config keys read from ``app.config`` only:

- ``SCHEDULER``: an object with ``astrai_infer.Scheduler``'s methods to serve instead of loading a
  checkpoint (tests pass a fake here).
- ``MAX_CONTENT_LENGTH``: Flask's cap on the request body; defaults to 1 MiB here.
"""

from __future__ import annotations

import hmac
import logging

from flask import Flask, request

from . import api, page
from .__about__ import __version__
from .errors import error_response, register_error_handlers
from .metrics import Metrics
from .model import ServedModel, get_served_model, init_served_model, resolve_setting

__all__ = ["ServedModel", "__version__", "create_app", "get_served_model"]

MAX_REQUEST_BYTES = 1024 * 1024


def create_app(test_config: dict | None = None) -> Flask:
    """Create the Flask app, loading the model once.

    Args:
        test_config: Config values that replace the defaults and the environment, for tests and for
            embedding the server in another program.
    """
    app = Flask(__name__)
    app.config.from_mapping(MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES)
    if test_config is not None:
        app.config.from_mapping(test_config)
    # Send Chinese text in JSON bodies as UTF-8 instead of \u escapes; clients decode both the same.
    app.json.ensure_ascii = False
    _show_server_logs()

    app.extensions[api.METRICS_KEY] = Metrics()
    init_served_model(app)
    register_error_handlers(app)
    api_key = resolve_setting(app, "ASTRAI_API_KEY", "")
    app.config["ASTRAI_API_KEY_REQUIRED"] = bool(api_key)  # the page then shows a key field
    _require_api_key(app, api_key)
    app.register_blueprint(api.bp)
    app.register_blueprint(page.bp)
    return app


def _require_api_key(app: Flask, api_key: str) -> None:
    """Reject API and metrics requests without ``Authorization: Bearer <api_key>``, when a key is set."""
    if not api_key:
        return
    expected = f"Bearer {api_key}".encode()

    @app.before_request
    def check_api_key():
        if not (request.path.startswith("/v1/") or request.path == "/metrics"):
            return None
        given = request.headers.get("Authorization", "").encode()
        if hmac.compare_digest(given, expected):
            return None
        message = "missing or wrong API key; send the header 'Authorization: Bearer <ASTRAI_API_KEY>'"
        return error_response(401, message, code="invalid_api_key")


def _show_server_logs() -> None:
    """Print this package's INFO logs to stderr unless the hosting program has set up logging.

    The server is an entry point, so it logs what it loaded. ``flask run`` configures no logging beyond
    Werkzeug's request lines, so without this handler those INFO messages would be dropped.
    """
    package_logger = logging.getLogger(__name__)
    if logging.getLogger().handlers or package_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
