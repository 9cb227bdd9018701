"""Production entry point: ``python -m astrai_server`` serves the app with waitress.

Design choices:
- waitress is a pure-Python WSGI server with a thread pool, so it runs on every platform and keeps
  the whole app, and so the one scheduler thread, in a single process. Servers that fork several
  worker processes would load the model once per worker and batch each worker's requests apart.
- It listens on 127.0.0.1 unless ``--host`` is given, and never runs Flask's debugger.
- Each streamed reply holds one waitress thread until it ends, so ``--threads`` bounds the number
  of concurrent clients; it defaults to twice the scheduler's batch size.
- ``send_bytes=1`` makes waitress pass each server-sent event to the socket as soon as it is
  written, instead of collecting 18 kB first.
"""

from __future__ import annotations

import argparse
import logging

from . import create_app

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m astrai_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    parser.add_argument("--threads", type=int, default=32, help="request threads (default: 32)")
    parser.add_argument("--checkpoint", help="checkpoint directory (default: ASTRAI_CHECKPOINT or runs/demo/model)")
    args = parser.parse_args(argv)
    try:
        import waitress
    except ImportError:
        raise SystemExit(
            "waitress is not installed; install the production extra: pip install 'astrai-server[production]'"
        ) from None

    config = {"ASTRAI_CHECKPOINT": args.checkpoint} if args.checkpoint else None
    app = create_app(config)
    logger.info("serving on http://%s:%d with %d threads", args.host, args.port, args.threads)
    try:
        waitress.serve(app, host=args.host, port=args.port, threads=args.threads, send_bytes=1,
                       ident="astrai-server")
    finally:
        served = app.extensions["astrai"]
        if served.scheduler is not None:
            served.scheduler.shutdown()
        logger.info("server stopped")


if __name__ == "__main__":
    main()
