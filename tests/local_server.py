"""Real HTTP servers on 127.0.0.1 for tests of code that talks to servers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

Server = TypeVar("Server", bound=ThreadingHTTPServer)
#: path (without query) -> (status, content type, body)
Replies = Mapping[str, tuple[int, str, bytes]]


@contextlib.contextmanager
def serving(srv: Server) -> Iterator[Server]:
    """Run ``srv`` in a thread while the block runs."""
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def serve_replies(replies: Replies) -> Iterator[str]:
    """Serve ``replies`` on a free port; yields the base URL. Unknown paths get 404 with an HTML page."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, kind, body = replies.get(
                self.path.split("?", 1)[0], (404, "text/html", b"<html><body>Not Found</body></html>")
            )
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as srv:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
