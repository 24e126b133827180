"""MLLM backends: one request (prompt text + labelled images) -> the raw answer text.

A generator has ``generate(request) -> str``, ``describe() -> dict``, ``max_concurrency`` (requests the
pipeline may have in flight) and ``image_short_side`` (images are sent re-encoded to at most this short
side). Failures are typed so the pipeline knows what to do:

- :class:`GenerationTimeout`, :class:`TransientGenerationError`: retried (each counts as an attempt);
- :class:`SampleGenerationError`: this sample cannot be generated (e.g. HTTP 400): rejected, no retry;
- :class:`GeneratorConfigError` and anything else: the run stops (a wrong key or model name would
  otherwise reject every sample one by one).

Backends: :class:`OpenAIChatGenerator` (any OpenAI-compatible ``/v1/chat/completions``: vLLM, TGI, SGLang,
hosted APIs) through the ``openai`` client, and :class:`TransformersGenerator` (a local
image-text-to-text model with its processor).
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImagePart:
    role: str       # "query image", "positive image", "hard negative image"
    jpeg: bytes


@dataclass(frozen=True)
class ChatRequest:
    """One user turn: text and images interleaved in order; ``seed`` makes sampling reproducible where
    the backend honours it; ``request_id`` (sample and attempt) is sent as ``X-Request-Id``, for tracing a
    sample in server or gateway logs."""

    parts: tuple[str | ImagePart, ...]
    seed: int
    request_id: str


class GenerationTimeout(Exception):
    reason = "timeout"


class TransientGenerationError(Exception):
    reason = "api_error"


class SampleGenerationError(Exception):
    reason = "bad_request"


class GeneratorConfigError(RuntimeError):
    """The endpoint refuses every request (authentication, unknown model): fix the configuration."""


class RateLimiter:
    """Request starts spaced ``60 / per_minute`` seconds apart, across threads. The openai client has
    no client-side limit (it only retries 429s), so this is written here."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class OpenAIChatGenerator:
    """Chat completions through the official ``openai`` client.

    ``base_url``: e.g. ``http://localhost:8000/v1`` (vLLM); None uses ``$OPENAI_BASE_URL`` or OpenAI.
    ``api_key_env``: the environment variable holding the key (never the key itself in a config); a
    self-hosted endpoint without one gets ``EMPTY``. The client's own retries are off (``max_retries=0``):
    every retry is the pipeline's, counted and reported. ``json_mode`` asks for
    ``response_format={"type": "json_object"}`` (OpenAI, vLLM, SGLang support it). ``extra_body`` is
    passed through (e.g. vLLM's ``guided_json``)."""

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_concurrency: int = 8, requests_per_minute: float | None = None,
                 temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 4096, json_mode: bool = True,
                 send_seed: bool = True, image_short_side: int = 512, extra_body: dict | None = None):
        import openai

        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise GeneratorConfigError(f"set ${api_key_env} (the API key) or give generator.base_url "
                                           "for a self-hosted endpoint")
            key = "EMPTY"  # vLLM / TGI without --api-key accept any key
        self.model, self.base_url, self.timeout = model, base_url, timeout
        self.max_concurrency, self.requests_per_minute = max_concurrency, requests_per_minute
        self.temperature, self.top_p, self.max_tokens = temperature, top_p, max_tokens
        self.json_mode, self.send_seed, self.image_short_side = json_mode, send_seed, image_short_side
        self.extra_body = dict(extra_body or {})
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)
        self.limiter = RateLimiter(requests_per_minute)
        self._openai = openai

    @staticmethod
    def content(request: ChatRequest) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for part in request.parts:
            if isinstance(part, ImagePart):
                url = "data:image/jpeg;base64," + base64.b64encode(part.jpeg).decode("ascii")
                out.append({"type": "image_url", "image_url": {"url": url}})
            else:
                out.append({"type": "text", "text": part})
        return out

    def generate(self, request: ChatRequest) -> str:
        openai = self._openai
        kw: dict[str, Any] = {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                              "max_tokens": self.max_tokens,
                              "messages": [{"role": "user", "content": self.content(request)}],
                              "extra_headers": {"X-Request-Id": request.request_id}}
        if self.json_mode:
            kw["response_format"] = {"type": "json_object"}
        if self.send_seed:
            kw["seed"] = request.seed
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        self.limiter.wait()
        try:
            resp = self.client.chat.completions.create(**kw)
        except openai.APITimeoutError as e:
            raise GenerationTimeout(f"no answer within {self.timeout} s") from e
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            raise GeneratorConfigError(f"{self.base_url or 'OpenAI'} refused model {self.model!r}: {e}") from e
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            raise SampleGenerationError(f"HTTP {e.status_code}: {e}") from e
        except (openai.APIConnectionError, openai.APIStatusError) as e:  # 429, 5xx, connection reset
            raise TransientGenerationError(f"{type(e).__name__}: {e}") from e
        if not resp.choices:
            raise TransientGenerationError("the answer has no choices")
        choice = resp.choices[0]
        text = choice.message.content or ""
        if choice.finish_reason == "length":  # a cut JSON object: say why it will not parse
            text += f"\n[finish_reason=length: max_tokens={self.max_tokens} reached]"
        return text

    def describe(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url, "temperature": self.temperature,
                "top_p": self.top_p, "max_tokens": self.max_tokens, "json_mode": self.json_mode,
                "image_short_side": self.image_short_side}


class TransformersGenerator:
    """A local MLLM: ``AutoProcessor`` + ``AutoModelForImageTextToText`` from a hub id or directory,
    the prompt through the processor's chat template, ``generate``, the new tokens decoded. One request
    at a time (``max_concurrency = 1``); the torch seed is set per request, so a sample's answer is
    reproducible. ``trust_remote_code`` only when set. Built on the first request."""

    max_concurrency = 1

    def __init__(self, model: str, device: str = "auto", dtype: str = "auto", max_new_tokens: int = 2048,
                 temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True,
                 trust_remote_code: bool = False, image_short_side: int = 512):
        self.model_name, self.device, self.dtype = model, device, dtype
        self.max_new_tokens, self.temperature, self.top_p, self.do_sample = max_new_tokens, temperature, top_p, do_sample
        self.trust_remote_code, self.image_short_side = trust_remote_code, image_short_side
        self._model = self._processor = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        self._processor = AutoProcessor.from_pretrained(self.model_name, trust_remote_code=self.trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(self.model_name, dtype=dtype,
                                                            trust_remote_code=self.trust_remote_code)
        self._model = model.to(device).eval()

    def messages(self, request: ChatRequest) -> list[dict[str, Any]]:
        from PIL import Image

        content: list[dict[str, Any]] = []
        for part in request.parts:
            if isinstance(part, ImagePart):
                content.append({"type": "image", "image": Image.open(io.BytesIO(part.jpeg)).convert("RGB")})
            else:
                content.append({"type": "text", "text": part})
        return [{"role": "user", "content": content}]

    def generate(self, request: ChatRequest) -> str:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            inputs = self._processor.apply_chat_template(self.messages(request), add_generation_prompt=True,
                                                         tokenize=True, return_dict=True, return_tensors="pt")
            inputs = inputs.to(self._model.device)
            torch.manual_seed(request.seed)
            with torch.inference_mode():
                out = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                           temperature=self.temperature, top_p=self.top_p)
            new = out[:, inputs["input_ids"].shape[1]:]
            return self._processor.batch_decode(new, skip_special_tokens=True)[0]

    def describe(self) -> dict[str, Any]:
        return {"backend": "transformers", "model": self.model_name, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "do_sample": self.do_sample, "image_short_side": self.image_short_side}
