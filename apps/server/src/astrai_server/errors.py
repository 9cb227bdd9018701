"""JSON error responses in the shape OpenAI's API uses.

Every error the API sends has the body ``{"error": {"message", "type", "param", "code"}}``.
``param`` names the request field at fault, or is null.

Flask and Werkzeug raise their own HTTP errors for an unknown route, a wrong method or a body that is
too large. On API paths these get the same JSON shape. Other paths keep Flask's HTML error pages.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

# Paths whose clients expect JSON, never HTML, even for errors Flask raises before a view runs.
API_PREFIX = "/v1/"
API_PATHS = ("/v1", "/health", "/metrics")


def error_response(
    status: int,
    message: str,
    error_type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> tuple[Response, int]:
    """Build an OpenAI-style error body with the given HTTP status."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return jsonify(body), status


def register_error_handlers(app: Flask) -> None:
    """Send Flask's own HTTP errors as JSON on API paths, and a too-large body as JSON anywhere."""

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException):
        if not isinstance(error, RequestEntityTooLarge) and not _wants_json(request.path):
            return error
        status = error.code or 500
        if isinstance(error, RequestEntityTooLarge):
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"request body is larger than the server's limit of {limit} bytes"
        else:
            message = f"{error.name}: {error.description}"
        error_type = "invalid_request_error" if status < 500 else "server_error"
        response, status = error_response(status, message, error_type)
        # Keep headers such as ``Allow`` on a 405, but not Werkzeug's HTML Content-Type.
        for name, value in error.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status


def _wants_json(path: str) -> bool:
    return path in API_PATHS or path.startswith(API_PREFIX)
