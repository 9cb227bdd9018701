"""Entry point for ``flask --app apps/server run`` typed from the repository root.

Flask imports this folder as a package named ``server`` and finds the ``create_app`` factory here;
the application itself lives in ``src/astrai_server``.
"""

from astrai_server import create_app  # noqa: F401  (re-exported for Flask)
