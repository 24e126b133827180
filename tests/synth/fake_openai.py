"""A local OpenAI-compatible chat endpoint for the synthesis tests (no network beyond loopback).

``POST /v1/chat/completions`` answers from a script: sample index -> the behaviour of each attempt,
read from the ``X-Request-Id`` header the pipeline sends (``mmtrain-synth-s<seed>-i<index>-a<attempt>``).
Behaviours: ``valid`` (default), ``fenced`` (valid inside a ```json fence), ``invalid_json``, ``schema``
(valid JSON without ``revised_sample``), ``timeout`` (sleeps longer than the client waits, then answers
valid: a client that did not time out would accept it), ``http_500``.

Every request is recorded (sample, attempt, body) so tests can count what the client really sent.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REQUEST_ID = re.compile(r"^mmtrain-synth-s(?P<seed>\d+)-i(?P<index>\d+)-a(?P<attempt>\d+)$")
QUERY_FIELDS = ("input_text", "user_query", "question")


def valid_answer(index: int, n_images: int, query_field: str) -> dict[str, Any]:
    """A schema-complete answer whose texts name the sample, every text field filled."""
    sample = {"task_instruction": f"Instruction for sample {index}.", query_field: f"query text {index}",
              "positive_document": f"positive {index}", "hard_negative_document": f"negative {index}"}
    return {
        "image_descriptions": [{"image": f"image {k}", "general_information": "g", "object_description": "o",
                                "contextual_background": "c", "task_brainstorm": "t"} for k in range(n_images)],
        "sample": {**sample, "task_instruction": "draft"},
        "self_evaluation": {"relevance": "r", "negative_plausibility": "n", "clarity": "c", "diversity": "d",
                            "possible_improvements": "p"},
        "revised_sample": sample,
    }


def answer_for(parts, index: int) -> str:
    """A valid answer to a pipeline ``ChatRequest``'s parts (for in-process fake generators)."""
    images = sum(1 for p in parts if not isinstance(p, str))
    prompt = "\n".join(p for p in parts if isinstance(p, str))
    field = next(f for f in QUERY_FIELDS if f'"{f}"' in prompt)
    return json.dumps(valid_answer(index, images, field))


class FakeChatServer:
    def __init__(self, script: dict[int, list[str]] | None = None, timeout_sleep: float = 1.5,
                 delay: float = 0.0):
        self.script = script or {}
        self.timeout_sleep, self.delay = timeout_sleep, delay
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                m = REQUEST_ID.match(self.headers.get("X-Request-Id", ""))
                index, attempt = (int(m["index"]), int(m["attempt"])) if m else (-1, 0)
                with server.lock:
                    server.requests.append({"index": index, "attempt": attempt, "body": body,
                                            "time": time.monotonic()})
                steps = server.script.get(index, [])
                behaviour = steps[attempt - 1] if 0 < attempt <= len(steps) else "valid"
                if behaviour == "http_500":
                    self.send_error(500, "scripted failure")
                    return
                if behaviour == "timeout":
                    time.sleep(server.timeout_sleep)
                elif server.delay:
                    time.sleep(server.delay)
                content = server.answer(behaviour, index, body)
                payload = json.dumps({
                    "id": f"chatcmpl-{index}-{attempt}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "?"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def answer(behaviour: str, index: int, body: dict[str, Any]) -> str:
        content = body["messages"][0]["content"]
        parts = [part["text"] if part["type"] == "text" else None for part in content]
        answer = json.loads(answer_for(parts, index))
        if behaviour == "invalid_json":
            return '{"image_descriptions": [{"image": "cut off'
        if behaviour == "schema":
            answer.pop("revised_sample")
        text = json.dumps(answer, ensure_ascii=False)
        return f"```json\n{text}\n```" if behaviour == "fenced" else text

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def attempts_of(self, index: int) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r["index"] == index)

    def __enter__(self) -> FakeChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
