"""The chat page at ``/``: one HTML template, one script and one stylesheet, with no build step.

The page keeps the conversation in the browser and sends all of it with every request, because the
API is stateless like OpenAI's. Without a model it shows how to get one instead of the chat form.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from .model import DEMO_COMMAND, POINT_COMMAND, get_served_model

bp = Blueprint("page", __name__)


@bp.get("/")
def index():
    """Render the chat page, or the instructions for getting a model when none is loaded."""
    served = get_served_model()
    return render_template(
        "chat.html",
        served=served,
        demo_command=DEMO_COMMAND,
        point_command=POINT_COMMAND,
        api_key_required=current_app.config.get("ASTRAI_API_KEY_REQUIRED", False),
    )
