"""Prompt templates: an ``Item`` -> the text an MLLM reads (before BOS / EOS and image expansion).

Queries carry an instruction, candidates do not (MM-Embed, mmE5: "query = instruction + content,
candidate = content only"). Item text may hold the neutral image marker of the data side
(mmtrain/data/placeholders.py); the image goes there, else in front of the text. The backbone says
how one image is written (``image_text``) and what separates it from following text (``image_sep``).

Templates (recipes.md §9):
- ``mm_embed`` (MM-Embed Table 11, LLaVa-E / NV-Embed-v1): query ``{instruction}\\nQuery: {content}``,
  candidate ``{content}``; ``<eos>`` appended; content = ``<image>\\n<text>``. The released
  ``nvidia/MM-Embed`` code writes ``Instruct: `` before the instruction (recipes.md §2.5):
  ``instruction_prefix`` (default "", as in the paper's table).
- ``mme5`` (mmE5 §3.3): query ``{image}{instruction}\\n{text}``, candidate ``{image}{text}``; ``[EOS]``
  appended to both.
- ``llava_p`` (MM-Embed Table 12, one-word prompts): the query prompt is looked up by the query's
  instruction (Table 11's M-BEIR instructions and NV-Embed's MTEB instructions are the keys);
  candidates get ``{content}\\nDescribe the above in one word:``; no EOS (the embedding is the state of
  the prompt's last token). An instruction not in the table (e.g. one of UniIR's other three
  phrasings, or the toy world's) gets ``{instruction}\\n{content}\\nDescribe the above in one word:``
  (mmtrain's choice, unconfirmed).

``Rendered.instruction_end`` is how many leading characters of the text are the instruction part
(NV-Embed masks "{instruction}\\nQuery: " out of pooling, recipes.md §7.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from mmtrain.data.placeholders import IMAGE_MARKER
from mmtrain.data.schema import Item


@dataclass(frozen=True)
class ImageStyle:
    """How a backbone writes one image into text."""

    image_text: str          # e.g. "<image>" (LLaVA-Next), "<|image|>" (mllama)
    image_sep: str = "\n"    # between the image and text that follows it


@dataclass(frozen=True)
class Rendered:
    text: str                # prompt body, without BOS / EOS
    instruction_end: int     # characters of ``text`` that are the instruction prefix (0: none)
    append_eos: bool


def _image_and_text(item: Item, text: str, style: ImageStyle) -> tuple[str, str]:
    """(image string or "", text without markers); a marker-positioned image stays inside the text."""
    if item.image is None:
        return "", text.replace(IMAGE_MARKER, "")
    if IMAGE_MARKER in text:  # keep the image where the data put it (first marker wins)
        head, tail = text.split(IMAGE_MARKER, 1)
        return "", head + style.image_text + tail.replace(IMAGE_MARKER, "")
    return style.image_text, text


def content_of(item: Item, text: str, style: ImageStyle) -> str:
    """``<image>{sep}<text>``, or just one of them."""
    image, text = _image_and_text(item, text, style)
    if image and text:
        return image + style.image_sep + text
    return image or text


class Template:
    """Base: ``render(item, text, style)`` with ``text`` the (possibly truncated) item text."""

    name = "base"

    def render(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        if item.instruction is not None:
            return self.query(item, text, style)
        return self.candidate(item, text, style)

    def query(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        raise NotImplementedError

    def candidate(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        raise NotImplementedError


class MMEmbedTemplate(Template):
    name = "mm_embed"

    def __init__(self, instruction_prefix: str = "", query_prefix: str = "Query: "):
        self.instruction_prefix = instruction_prefix
        self.query_prefix = query_prefix

    def query(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        head = f"{self.instruction_prefix}{item.instruction}\n{self.query_prefix}"
        return Rendered(head + content_of(item, text, style), len(head), True)

    def candidate(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        return Rendered(content_of(item, text, style), 0, True)


class MmE5Template(Template):
    name = "mme5"

    def __init__(self, **unused: str):  # the instruction sits between image and text: no prefixes
        pass

    def query(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        image, text = _image_and_text(item, text, style)
        head = (image + style.image_sep if image else "") + f"{item.instruction}\n"
        return Rendered(head + text, len(head), True)

    def candidate(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        return Rendered(content_of(item, text, style), 0, True)


# MM-Embed Table 12, keyed by the Table 11 instruction the same query carries (recipes.md §9.1-9.3).
ONE_WORD = " in one word:"
LLAVA_P_MBEIR = {
    "Identify the news-related image in line with the described event.":
        "[image] {text}\nDescribe the news-related caption",
    "Find me an everyday image that matches the given caption.":
        "[image] {text}\nDescribe the everyday caption",
    "Based on the following fashion description, retrieve the best matching image.":
        "[image] {text}\nDescribe the fashion description",
    "Retrieve passages from Wikipedia that provide answers to the following question.":
        "[text] {text}\nAnswer the question using Wikipedia",
    "Find a news image that matches the provided caption.":
        "[image,text] {text}\nDescribe the news-related caption",
    "Find a Wikipedia image that answers this question.":
        "[image,text] {text}\nAnswer the question using Wikipedia",
    "Find a caption for the news in the given photo.":
        "[text] {image}\nDescribe the news-related image",
    "Find an image caption describing the following everyday image.":
        "[text] {image}\nDescribe the everyday image",
    "Find a product description for the fashion item in the image.":
        "[text] {image}\nDescribe the fashion image",
    "Find a day-to-day image that looks similar to the provided image.":
        "[image] {image}\nDescribe the everyday image",
    "Retrieve a Wikipedia paragraph that provides an answer to the given query about the image.":
        "[text] {image}\n{text}\nAnswer the question based on the image from Wikipedia",
    "Find a fashion image that aligns with the reference image and style note.":
        "[image] {image}\nChange the style of this shirt/dress/toptee to {text}\n"
        "Describe this modified shirt/dress/toptee",
    "Retrieve a day-to-day image that aligns with the modification instructions of the provided image.":
        "[image] {image}\nModify this image with {text}\nDesribe modified image",  # sic, Table 12
    "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image.":
        "[image,text] {image}\n{text}\n"
        "Answer the question based on the interleaved image-text passage from Wikipedia",
}
LLAVA_P_MTEB = {  # NV-Embed MTEB instruction (Table 11) -> Table 12 prompt, all "[text] <q_txt>\n..."
    "Given a claim, find documents that refute the claim":
        "Given a claim, generate a document that refute the claim",
    "Given a claim about climate change, retrieve documents that support or refute the claim":
        "Given a claim about climate change, generate a document that supports or refutes the claim",
    "Given a question, retrieve detailed question descriptions from StackExchange that are duplicates "
    "to the given question": "Describe the StackExchange question",
    "Given a query, retrieve relevant entity descriptions from DBPedia":
        "Given a query, generate a relevant entity description from DBPedia",
    "Given a claim, retrieve documents that support or refute the claim":
        "Given a claim, generate a document that supports or refutes the claim",
    "Given a financial question, retrieve user replies that best answer the question":
        "Answer the financial question",
    "Given a multi-hop question, retrieve documents that can help answer the question":
        "Answer the multi-hop question",
    "Given a web search query, retrieve relevant passages that answer the query":
        "Answer the web search query",
    "Given a question, retrieve relevant documents that best answer the question": "Answer the question",
    "Given a question, retrieve Wikipedia passages that answer the question":
        "Answer the question using Wikipedia",
    "Find questions that have the same meaning as the input question": "Describe the question",
    "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper":
        "Given a scientific paper title, generate a paper abstract that is cited by the given paper",
    "Given a scientific claim, retrieve documents that support or refute the claim":
        "Given a scientific claim, generate a document that support or refute the claim",
    "Given a question, retrieve detailed and persuasive arguments that answer the question":
        "Answer the question with detailed and persuasive arguments",
    "Given a query on COVID-19, retrieve documents that answer the query": "Answer the query on COVID-19",
}


def _key(instruction: str) -> str:
    return instruction.strip().rstrip(".").lower()


class LlavaPTemplate(Template):
    name = "llava_p"
    candidate_prompt = "Describe the above" + ONE_WORD

    def __init__(self, **unused: str):
        self.table = {_key(k): v + ONE_WORD for k, v in LLAVA_P_MBEIR.items()}
        self.table.update({_key(k): f"[text] {{text}}\n{v}{ONE_WORD}" for k, v in LLAVA_P_MTEB.items()})

    def query(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        fmt = self.table.get(_key(item.instruction))
        image, plain = _image_and_text(item, text, style)
        if fmt is not None and (not image or "{image}" in fmt):
            # str.replace, not str.format: item text may contain braces.
            return Rendered(fmt.replace("{image}", image).replace("{text}", plain), 0, False)
        # Unknown instruction, or an image the table row has no slot for.
        content = content_of(item, text, style)
        return Rendered(f"{item.instruction}\n{content}\n{self.candidate_prompt}", 0, False)

    def candidate(self, item: Item, text: str, style: ImageStyle) -> Rendered:
        return Rendered(f"{content_of(item, text, style)}\n{self.candidate_prompt}", 0, False)


TEMPLATES: dict[str, type[Template]] = {t.name: t for t in (MMEmbedTemplate, MmE5Template, LlavaPTemplate)}


def build_template(name: str, instruction_prefix: str = "", query_prefix: str = "Query: ") -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {name!r}")
    return TEMPLATES[name](instruction_prefix=instruction_prefix, query_prefix=query_prefix)
