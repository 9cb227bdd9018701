"""AstrAI server: an OpenAI-compatible chat completions API and a chat page, built with Flask.

``create_app`` is the application factory. Run it from the repository root with
``flask --app apps/server run`` (or ``flask --app astrai_server run`` from anywhere once the package is
installed).

Config keys, each read from ``app.config`` first and then from the environment:

- ``ASTRAI_CHECKPOINT``: checkpoint directory to serve; defaults to ``runs/demo/model`` in the
  repository, where ``tools/demo.sh`` writes its model.
- ``ASTRAI_DEVICE``: torch device to load the model on; defaults to ``cpu``.

Config keys read from ``app.config`` only:

- ``GENERATOR``: an object with ``astrai_infer.Generator``'s methods to serve instead of loading a
  checkpoint (tests pass a fake here).
- ``MAX_CONTENT_LENGTH``: Flask's cap on the request body; defaults to 1 MiB here.
"""

from __future__ import annotations

import logging

from flask import Flask

from . import api, page
from .__about__ import __version__
from .errors import register_error_handlers
from .model import ServedModel, get_served_model, init_served_model

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

    init_served_model(app)
    register_error_handlers(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(page.bp)
    return app


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
