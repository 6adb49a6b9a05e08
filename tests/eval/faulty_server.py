"""FaultyServer: a FAKE chat-completions server, for faults a real vLLM cannot be made to produce on demand.

Timeouts, 5xx answers, unreadable bodies and dropped connections are what `lorafleet eval` must score
as failures; vLLM does these only under real trouble, so this stdlib HTTP server produces them by the
request's `model` name. Happy-path behaviour is tested against a real vLLM (test_eval_vllm.py).

models: "echo"   200, the answer is the JSON object {"category": <system message or "none">, "priority": "low", ...}
        "slow"   like echo after SLOW_S seconds
        "boom"   500 with an OpenAI-shaped error body
        "junk"   200 with a body that is not JSON
        "hangup" closes the connection without answering
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_S = 0.3


class FaultyServer:
    """Serves on a free loopback port in a daemon thread; records the peak number of requests in flight."""

    def __init__(self) -> None:
        self.peak_in_flight = 0
        self.requests: list[dict] = []
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _enter(self, body: dict) -> None:
        with self._lock:
            self.requests.append(body)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server._enter(body)
                try:
                    self._answer(body)
                finally:
                    server._leave()

            def _answer(self, body: dict) -> None:
                model = body["model"]
                if model == "hangup":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if model == "slow":
                    time.sleep(SLOW_S)
                if model == "boom":
                    return self._send(500, {"error": {"message": "engine exploded", "type": "server_error", "param": None, "code": 500}})
                if model == "junk":
                    return self._send(200, b"<html>not json</html>")
                system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "none")
                content = json.dumps({"category": system, "priority": "low", "reply": "hello"})
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}],
                                 "usage": {"completion_tokens": 7}})

            def _send(self, status: int, payload: dict | bytes) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
