"""A loopback HTTP server with a video site's failure modes, for tests and benchmarks of ``download``.

``LoopbackServer(files)`` serves ``files`` (name -> bytes) at ``/ok/<name>`` and the same names under
paths that fail in one way each:

- ``/ok/<name>`` answers ``Range: bytes=a-b`` requests with 206 (ffmpeg seeks over HTTP this way);
- ``/404/<name>``, ``/403/<name>``, ``/410/<name>``, ``/500/<name>``: that status;
- ``/429/<n>/<name>``: 429 with ``Retry-After: 1`` for the first ``n`` requests of the path, then the file;
- ``/short/<name>``: ``Content-Length`` of the whole file, half the body, then the connection closes;
- ``/stall/<name>``: half the body, then nothing for ``stall_s`` seconds;
- ``/nolength/<name>``: the body without ``Content-Length`` (ends when the connection closes);
- ``/huge/<name>``: ``Content-Length`` of 1 TB (only the header matters);

``requests`` counts requests per path; ``times`` records when each came.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

RETRY_AFTER_S = 1


class LoopbackServer:
    def __init__(self, files: dict[str, bytes], stall_s: float = 5.0):
        self.files, self.stall_s = files, stall_s
        self.requests: Counter = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._handle(self)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:  # clients hanging up are expected here
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, mode: str, name: str) -> str:
        return f"{self.base}/{mode}/{name}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(h.path)
        with self._lock:
            self.requests[path] += 1
            self.times[path].append(time.monotonic())
            count = self.requests[path]
        parts = path.strip("/").split("/")
        mode, name = parts[0], parts[-1]
        body = self.files.get(name)
        if body is None or mode in ("404", "403", "410", "500"):
            code = 404 if body is None else int(mode)
            return self._send(h, code, b"error\n", close=False)
        if mode == "429" and count <= int(parts[1]):
            return self._send(h, 429, b"slow down\n", extra={"Retry-After": str(RETRY_AFTER_S)})
        if mode in ("ok", "429"):
            return self._send_range(h, body)
        if mode == "huge":
            h.send_response(200)
            h.send_header("Content-Length", str(10**12))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body[:1024])
            return
        if mode == "nolength":
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body)
            h.close_connection = True
            return
        if mode in ("short", "stall"):
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body[:len(body) // 2])
            h.wfile.flush()
            if mode == "stall":
                time.sleep(self.stall_s)
            h.close_connection = True
            return
        self._send(h, 400, b"unknown mode\n")

    @classmethod
    def _send_range(cls, h, body: bytes) -> None:
        """200 with the file, or 206 with ``Range: bytes=a-b`` (ffmpeg's seeks over HTTP)."""
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if match is None:
            return cls._send(h, 200, body)
        lo = int(match.group(1))
        hi = min(int(match.group(2)) if match.group(2) else len(body) - 1, len(body) - 1)
        if lo >= len(body):
            return cls._send(h, 416, b"", extra={"Content-Range": f"bytes */{len(body)}"})
        cls._send(h, 206, body[lo:hi + 1], extra={"Content-Range": f"bytes {lo}-{hi}/{len(body)}",
                                                  "Accept-Ranges": "bytes"})

    @staticmethod
    def _send(h, code: int, body: bytes, extra: dict | None = None, close: bool = False) -> None:
        h.send_response(code)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Type", "video/mp4" if code in (200, 206) else "text/plain")
        for k, v in (extra or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
