"""Every word the MLLM is told: mmE5's single-pass synthesis prompt (§3.2.2, App. C).

The appendix prompts are figures; their text describes the design this file follows:

- one prompt per task; retrieval's wording depends on whether the document side has images;
- a random clarity and difficulty setting per sample (after Wang et al., 2024a);
- the images are first described from four aspects (general information, objects, contextual
  background, task-specific brainstorming), then the sample is written under guidelines, then it is
  evaluated (relevance of each text to its image, plausibility of the hard negative, clarity of the
  instruction, diversity) with "possible_improvements", and a revised sample closes the answer: only
  the revision is kept;
- a side without text gets an empty string ("input_text" of an image-only classification query,
  "positive_document" / "hard_negative_document" of an image-only document);
- instructions are English, the other texts in the sample's language; VQA has no generated instruction
  (fixed "Represent the given image with the following question:").

Field names the appendix gives are used ("input_text", "positive_document", "hard_negative_document",
"possible_improvements"); the others are mmtrain's. response.py validates what comes back.
"""

from __future__ import annotations

import hashlib

from mmtrain.synth.configure import VQA_INSTRUCTION, SampleConfig
from mmtrain.synth.languages import XLMR_LANGUAGES

# The query's field per task (classification's is the appendix's; response.py accepts any of them).
QUERY_FIELD = {"classification": "input_text", "retrieval": "user_query", "vqa": "question"}

TASK_BRIEF = {
    "classification": (
        "Brainstorm a potentially useful image classification task for the query image below (what "
        "could one classify about images like it: objects, species, scenes, styles, emotions, places, "
        "...), then write one classification example: the query is to be classified, the positive "
        "document is its correct label (or a short label phrase), and the hard negative document is a "
        "plausible but wrong label from the same label set."),
    "vqa": (
        "Write one visual question answering example about the query image below: the query is the image "
        "with a question about it that needs the image to be answered, the positive document is the "
        "correct answer, and the hard negative document is a plausible but wrong answer."),
    "retrieval": (
        "Brainstorm a potentially useful multimodal retrieval task for the images below, then write one "
        "retrieval example: the task instruction tells what to retrieve, the query is what a user "
        "submits, the positive document is what the query should retrieve under the instruction, and "
        "the hard negative document looks relevant but does not satisfy the instruction."),
}

QUERY_SIDE = {
    "image": 'The query is the query image alone: "{field}" must be an empty string.',
    "image,text": 'The query is the query image together with the text "{field}" you write about it.',
    "text": 'The query is the text "{field}" alone; the user does not see any image, so it must describe '
            "what is wanted in words.",
}
DOCUMENT_SIDE = {
    "text": 'The documents are texts you write: "positive_document" and "hard_negative_document".',
    "image": 'The positive document is the positive image and the hard negative document is the hard '
             'negative image, with no text: "positive_document" and "hard_negative_document" must be '
             "empty strings.",
    "image,text": 'The positive document is the positive image together with the text "positive_document", '
                  'the hard negative document is the hard negative image together with the text '
                  '"hard_negative_document"; write each text for its own image.',
}

INSTRUCTION_RULE = {
    "generated": ('"task_instruction": one English sentence that states the task and links the query to the '
                  'positive document, general enough to serve many examples of the same task (e.g. "Identify '
                  'the breed of the dog in the image", "Retrieve a news photo that matches the caption").'),
    "fixed": f'"task_instruction": exactly "{VQA_INSTRUCTION}" (fixed for this task).',
}

TEMPLATE = """\
You are creating training data for a multimodal embedding model.

{brief}

Inputs: {inputs}
{query_side}
{document_side}

Work in four steps and put all of them into one JSON object.

Step 1. Describe every input image from four aspects, one entry per image in the order given:
(1) "general_information": what the image is overall;
(2) "object_description": the objects present and their details;
(3) "contextual_background": the setting, context and background knowledge it relates to;
(4) "task_brainstorm": how this image relates to the {task} data you are about to write.

Step 2. Write the example ("sample"):
- {instruction_rule}
- "{query_field}", "positive_document", "hard_negative_document": written in {language}{empty_note}.
- The query must be {clarity} and need {difficulty} level knowledge to handle.
- Every text must be grounded in its own image: mention only what is really visible or inferable.
- The hard negative must be plausible and closely related, yet clearly not a correct match.
- Texts must read naturally on their own: never say "the query image", "the positive image" or "image 1".

Step 3. Evaluate your example ("self_evaluation"): "relevance" (does each text match its image?),
"negative_plausibility" (is the hard negative hard yet wrong?), "clarity" (is the instruction clear?),
"diversity" (is the example creative rather than generic?), and "possible_improvements".

Step 4. Write the improved example ("revised_sample"), following the same rules as step 2.

Answer with the JSON object only, no markdown, in exactly this form:
{{
  "image_descriptions": [{{"image": "{first_role}", "general_information": "...", "object_description": "...",
                          "contextual_background": "...", "task_brainstorm": "..."}}],
  "sample": {{"task_instruction": "...", "{query_field}": "...", "positive_document": "...",
             "hard_negative_document": "..."}},
  "self_evaluation": {{"relevance": "...", "negative_plausibility": "...", "clarity": "...", "diversity": "...",
                      "possible_improvements": "..."}},
  "revised_sample": {{"task_instruction": "...", "{query_field}": "...", "positive_document": "...",
                     "hard_negative_document": "..."}}
}}"""

IMAGE_LABEL = "[{role}]"


def render(config: SampleConfig) -> str:
    """The prompt text of one sample (the images are sent beside it, each after its label)."""
    field = QUERY_FIELD[config.task]
    roles = [role for role, _ in config.images()]
    empties = [f for f, empty in ((field, "text" not in config.query_modality),
                                  ("positive_document", "text" not in config.document_modality),
                                  ("hard_negative_document", "text" not in config.document_modality)) if empty]
    return TEMPLATE.format(
        brief=TASK_BRIEF[config.task],
        inputs=", ".join(IMAGE_LABEL.format(role=r) for r in roles) + f" ({len(roles)} image{'s' * (len(roles) > 1)})",
        query_side=QUERY_SIDE[config.query_modality].format(field=field),
        document_side=DOCUMENT_SIDE[config.document_modality],
        task=config.task, instruction_rule=INSTRUCTION_RULE["fixed" if config.task == "vqa" else "generated"],
        query_field=field, language=XLMR_LANGUAGES[config.language],
        empty_note=(" (leave " + ", ".join(f'"{e}"' for e in empties) + " empty)") if empties else "",
        clarity=config.clarity, difficulty=config.difficulty, first_role=roles[0])


def prompt_version() -> str:
    """Hash of every template above: a run refuses to resume under a changed prompt."""
    parts = [TEMPLATE, IMAGE_LABEL, *TASK_BRIEF.values(), *QUERY_SIDE.values(), *DOCUMENT_SIDE.values(),
             *INSTRUCTION_RULE.values(), *QUERY_FIELD.values()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
