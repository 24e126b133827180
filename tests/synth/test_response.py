"""Answer validation and the prompt: hand-built answers against the modality rules."""

from __future__ import annotations

import copy
import json

import pytest
from fake_openai import valid_answer

from mmtrain.synth.configure import VQA_INSTRUCTION, SampleConfig
from mmtrain.synth.prompts import QUERY_FIELD, prompt_version, render
from mmtrain.synth.response import InvalidResponse, validate


def config(task: str, tag: str, language: str = "de") -> SampleConfig:
    images = {"I2T": ("q.jpg", None, None), "IT2T": ("q.jpg", None, None), "I2I": ("q.jpg", "p.jpg", "n.jpg"),
              "IT2I": ("q.jpg", "p.jpg", "n.jpg"), "IT2IT": ("q.jpg", "p.jpg", "n.jpg"),
              "T2I": (None, "p.jpg", "n.jpg"), "T2IT": (None, "p.jpg", "n.jpg")}[tag]
    return SampleConfig(0, task, tag, language, "clear", "college", 0, *images)


def answer(cfg: SampleConfig, **revised) -> dict:
    a = valid_answer(0, len(cfg.images()), QUERY_FIELD[cfg.task])
    a["revised_sample"].update(revised)
    return a


def test_valid_answer_keeps_the_revision():
    cfg = config("retrieval", "IT2IT")
    a = answer(cfg)
    a["sample"]["positive_document"] = "draft positive"
    s = validate(json.dumps(a), cfg)
    assert (s.instruction, s.query, s.positive, s.negative) == ("Instruction for sample 0.", "query text 0",
                                                                "positive 0", "negative 0")
    assert s.ignored_fields == [] and s.response["sample"]["positive_document"] == "draft positive"


def test_fenced_json_and_whitespace():
    cfg = config("classification", "I2T")
    a = answer(cfg, positive_document="  Label  ")
    assert validate("```json\n" + json.dumps(a) + "\n```", cfg).positive == "Label"
    assert validate("\n  " + json.dumps(a) + "  \n", cfg).positive == "Label"


@pytest.mark.parametrize("text, match", [
    ("", "not JSON"), ("Sure! Here is the data: {}", "not JSON"), ("[1, 2]", "not an object"),
    ('{"image_descriptions": [', "not JSON"),
])
def test_invalid_json(text, match):
    with pytest.raises(InvalidResponse, match=match) as e:
        validate(text, config("vqa", "IT2T"))
    assert e.value.reason == "invalid_json"


def _drop(path: tuple):
    def edit(a: dict) -> None:
        node = a
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


@pytest.mark.parametrize("edit, match", [
    (_drop(("revised_sample",)), "revised_sample: Field required"),
    (_drop(("self_evaluation", "possible_improvements")), "self_evaluation.possible_improvements"),
    (lambda a: a["image_descriptions"][0].update(object_description="  "), "image_descriptions.0.object_description"),
    (lambda a: a["revised_sample"].update(positive_document=3), "revised_sample.positive_document"),
    (lambda a: a.update(sample="text"), "sample"),
    (lambda a: a["image_descriptions"].append(dict(a["image_descriptions"][0])), "2 entries for 1 input image"),
])
def test_schema_violations(edit, match):
    cfg = config("retrieval", "IT2T")
    a = answer(cfg)
    edit(a)
    with pytest.raises(InvalidResponse, match=match) as e:
        validate(json.dumps(a), cfg)
    assert e.value.reason == "schema"


@pytest.mark.parametrize("task, tag, empty, ok", [
    ("retrieval", "IT2T", "user_query", False),            # the query has text: required
    ("classification", "I2T", "input_text", True),          # image-only query: may be empty
    ("retrieval", "T2I", "positive_document", True),        # image-only documents
    ("retrieval", "T2IT", "hard_negative_document", False),
    ("retrieval", "I2I", "task_instruction", False),
    ("vqa", "IT2T", "task_instruction", True),              # fixed, not generated
])
def test_required_texts_follow_the_modality(task, tag, empty, ok):
    cfg = config(task, tag)
    a = answer(cfg, **{empty: ""})
    if ok:
        validate(json.dumps(a), cfg)
    else:
        with pytest.raises(InvalidResponse, match="empty revised_sample"):
            validate(json.dumps(a), cfg)


def test_text_without_room_is_ignored_and_counted():
    cfg = config("retrieval", "I2I")  # no text anywhere but the instruction
    s = validate(json.dumps(answer(cfg)), cfg)
    assert (s.query, s.positive, s.negative) == ("", "", "")
    assert sorted(s.ignored_fields) == ["revised_sample.hard_negative_document", "revised_sample.positive_document",
                                        "revised_sample.query"]
    vqa = config("vqa", "IT2T")
    s = validate(json.dumps(answer(vqa, task_instruction="Answer this.")), vqa)
    assert s.instruction == VQA_INSTRUCTION and s.ignored_fields == ["revised_sample.task_instruction"]


def test_query_field_aliases():
    cfg = config("vqa", "IT2T")
    a = answer(cfg)
    assert "question" in a["revised_sample"]
    b = copy.deepcopy(a)
    b["revised_sample"]["query"] = b["revised_sample"].pop("question")
    assert validate(json.dumps(a), cfg).query == validate(json.dumps(b), cfg).query == "query text 0"


def test_prompt_states_the_configuration():
    p = render(config("retrieval", "T2IT", "sw"))
    assert "Swahili" in p and "[positive image], [hard negative image] (2 images)" in p
    assert '"user_query" alone' in p and "clear" in p and "college" in p
    assert "English sentence" in p  # instructions are English whatever the language
    p = render(config("classification", "I2T"))
    assert '"input_text" must be an empty string' in p and '(leave "input_text" empty)' in p
    assert VQA_INSTRUCTION in render(config("vqa", "IT2T"))
    assert len(prompt_version()) == 16
