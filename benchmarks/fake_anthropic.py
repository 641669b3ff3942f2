"""A fake Anthropic Messages API on 127.0.0.1 that returns real Messages JSON.

Modes: ok (a tool_use answer keeping the first head finding offered), timeout (answers too
late), 429, 500, 529 (overloaded), 429-day (429 with ``Retry-After: 86400``, as a real rate
limit can say), malformed (not JSON), notool (a text block only), invalid (keeps a finding that
was not offered), refusal (stop_reason "refusal"). Every request is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeAnthropic:
    def __init__(self, mode: str = "ok", delay_s: float = 1.5):
        self.mode = mode
        self.delay_s = delay_s
        self.requests: list[dict] = []  # {"path", "headers", "body"}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                status, payload, headers = fake.answer(body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout mode)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeAnthropic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def message_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].startswith("/v1/messages")]

    def answer(self, body: dict):
        offered = body["tools"][0]["input_schema"]["properties"]["keep"]["items"]["enum"]
        message = {"id": f"msg_{len(self.requests):04d}", "type": "message", "role": "assistant",
                   "model": body.get("model"), "stop_sequence": None,
                   "usage": {"input_tokens": 120, "output_tokens": 30}}
        tool_use = {"type": "tool_use", "id": f"toolu_{len(self.requests):04d}", "name": body["tools"][0]["name"]}
        fast_retry = {"retry-after-ms": "5"}
        if self.mode == "ok":
            return 200, {**message, "stop_reason": "tool_use", "content": [
                {**tool_use, "input": {"keep": offered[:1], "rationale": f"{offered[0]} overlaps the tail finding."}}]}, {}
        if self.mode == "timeout":
            time.sleep(self.delay_s)
            return 200, {**message, "stop_reason": "tool_use", "content": [
                {**tool_use, "input": {"keep": [], "rationale": "late"}}]}, {}
        if self.mode == "429":
            return 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, fast_retry
        if self.mode == "429-day":
            return 429, {"type": "error", "error": {"type": "rate_limit_error", "message": "come back tomorrow"}}, \
                {"retry-after": "86400"}
        if self.mode == "529":
            return 529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, fast_retry
        if self.mode == "500":
            return 500, {"type": "error", "error": {"type": "api_error", "message": "boom"}}, fast_retry
        if self.mode == "malformed":
            return 200, b"{not json", {}
        if self.mode == "notool":
            return 200, {**message, "stop_reason": "end_turn", "content": [{"type": "text", "text": "Effusion."}]}, {}
        if self.mode == "invalid":
            return 200, {**message, "stop_reason": "tool_use", "content": [
                {**tool_use, "input": {"keep": ["Dragon"], "rationale": "made up"}}]}, {}
        if self.mode == "refusal":
            return 200, {**message, "stop_reason": "refusal", "content": []}, {}
        raise ValueError(f"unknown mode {self.mode}")
