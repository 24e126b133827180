"""Validate one MLLM answer against the schema prompts.py asks for; keep the revised sample.

Checks, in order (the first failure is the reason reported):

1. ``invalid_json``: the answer (optionally inside one ```json fence) is a JSON object;
2. ``schema``: pydantic: ``image_descriptions`` (one per input image, four non-empty aspects each),
   ``sample``, ``self_evaluation`` (five non-empty strings) and ``revised_sample`` present with string
   fields; then, on the revised sample, non-empty texts wherever the configured modality has text and a
   non-empty English instruction (VQA's is fixed and not generated).

Text the modality has no room for (a query text on an image-only query) is ignored, and counted in
``ignored_fields``: the sample is still what was configured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from mmtrain.synth.configure import VQA_INSTRUCTION, SampleConfig

NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Text = Annotated[str, StringConstraints(strip_whitespace=True)]
_FENCE = re.compile(r"^```(?:json)?\s*\n(?P<body>.*)\n```$", re.DOTALL)


class ImageDescription(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: NonEmpty
    general_information: NonEmpty
    object_description: NonEmpty
    contextual_background: NonEmpty
    task_brainstorm: NonEmpty


class DataSample(BaseModel):
    model_config = ConfigDict(extra="ignore")
    task_instruction: Text = ""
    query: Text = Field("", validation_alias=AliasChoices("query", "input_text", "user_query", "question"))
    positive_document: Text = ""
    hard_negative_document: Text = ""


class SelfEvaluation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    relevance: NonEmpty
    negative_plausibility: NonEmpty
    clarity: NonEmpty
    diversity: NonEmpty
    possible_improvements: NonEmpty


class SynthesisResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image_descriptions: list[ImageDescription]
    sample: DataSample
    self_evaluation: SelfEvaluation
    revised_sample: DataSample


class InvalidResponse(ValueError):
    """``reason`` is ``invalid_json`` or ``schema``; the message says what is wrong."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Synthesized:
    """The kept sample (the revision), with the full parsed answer for the record."""

    instruction: str
    query: str
    positive: str
    negative: str
    response: dict[str, Any]
    ignored_fields: list[str] = field(default_factory=list)


def parse_json(text: str) -> dict[str, Any]:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced["body"].strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        raise InvalidResponse("invalid_json", f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidResponse("invalid_json", f"JSON {type(value).__name__}, not an object")
    return value


def _pydantic_message(err: ValidationError) -> str:
    parts = [f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()[:5]]
    more = f" (+{err.error_count() - 5} more)" if err.error_count() > 5 else ""
    return "; ".join(parts) + more


def validate(text: str, config: SampleConfig) -> Synthesized:
    """The revised sample of a raw answer, or :class:`InvalidResponse`."""
    raw = parse_json(text)
    try:
        resp = SynthesisResponse.model_validate(raw)
    except ValidationError as e:
        raise InvalidResponse("schema", _pydantic_message(e)) from None
    n_images = len(config.images())
    if len(resp.image_descriptions) != n_images:
        raise InvalidResponse("schema", f"image_descriptions has {len(resp.image_descriptions)} entries for "
                                        f"{n_images} input image(s)")
    rev = resp.revised_sample
    query_text = "text" in config.query_modality
    doc_text = "text" in config.document_modality
    required = {"revised_sample.query": (rev.query, query_text),
                "revised_sample.positive_document": (rev.positive_document, doc_text),
                "revised_sample.hard_negative_document": (rev.hard_negative_document, doc_text),
                "revised_sample.task_instruction": (rev.task_instruction, config.task != "vqa")}
    empty = [name for name, (value, needed) in required.items() if needed and not value]
    if empty:
        raise InvalidResponse("schema", f"empty {', '.join(empty)} (modality {config.modality}, task {config.task})")
    ignored = [name for name, (value, needed) in required.items() if value and not needed]
    instruction = VQA_INSTRUCTION if config.task == "vqa" else rev.task_instruction
    return Synthesized(instruction, rev.query if query_text else "", rev.positive_document if doc_text else "",
                       rev.hard_negative_document if doc_text else "", resp.model_dump(mode="json"), ignored)
