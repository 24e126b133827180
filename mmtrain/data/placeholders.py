"""Image placeholders: stored backbone-neutral, rendered per backbone by its processor.

MMEB and mmE5 write Phi-3.5-V's ``<|image_1|>`` (then a newline) into the text (data-formats.md §2, §11).
Converters store text without it: a *leading* placeholder, the only position the released data uses, is
removed (the image field says an image is attached, as in M-BEIR records), and any other occurrence
becomes :data:`IMAGE_MARKER`, so its position is kept. A processor turns that back into its own tokens:

    >>> render_placeholders("What is shown?", has_image=True, backbone="llava_next")
    '<image>\\nWhat is shown?'
    >>> render_placeholders("What is shown?", has_image=False, backbone="mllama")
    '<|begin_of_text|>What is shown?'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Neutral, and not a special token of any tokenizer we know, so it can never be taken for a real one.
IMAGE_MARKER = "<mmtrain:image>"
_PHI = re.compile(r"<\|image_\d+\|>\n?")


@dataclass(frozen=True)
class ImageTokens:
    """How one backbone writes an attached image into its text (data-formats.md §11)."""

    with_image: str      # replaces the placeholder (or is prepended when the text has none)
    without_image: str = ""  # prepended when the item has no image


BACKBONE_IMAGE_TOKENS: dict[str, ImageTokens] = {
    "phi3_v": ImageTokens("<|image_1|>\n"),
    "llava_next": ImageTokens("<image>\n"),            # MM-Embed / E5-V: "<image>\n<text>"
    "qwen2_vl": ImageTokens("<|vision_start|><|image_pad|><|vision_end|>"),
    "mllama": ImageTokens("<|image|><|begin_of_text|>", "<|begin_of_text|>"),  # mmE5
    "none": ImageTokens(""),                           # CLIP_SF / BLIP_FF: separate towers
}


def neutralize(text: str | None, has_image: bool) -> tuple[str, str | None]:
    """(neutral text, repair) for a text in MMEB storage format. ``repair`` names a fix the caller
    counts: ``placeholder_without_image`` (mmE5 synthetic quirk, placeholder dropped) or None."""
    text = (text or "").strip()
    if not _PHI.search(text):
        return text, None
    if not has_image:
        return _PHI.sub("", text).strip(), "placeholder_without_image"
    m = _PHI.match(text)
    if m:
        text = text[m.end():]
    return _PHI.sub(IMAGE_MARKER, text).strip(), None


def render_placeholders(text: str | None, has_image: bool, backbone: str | ImageTokens) -> str:
    """The text a backbone's tokenizer sees: the neutral marker (or, without one, the start of the
    text) gets the backbone's image tokens when the item has an image."""
    tokens = BACKBONE_IMAGE_TOKENS[backbone] if isinstance(backbone, str) else backbone
    text = text or ""
    if not has_image:
        return tokens.without_image + text.replace(IMAGE_MARKER, "")
    if IMAGE_MARKER in text:
        return text.replace(IMAGE_MARKER, tokens.with_image, 1).replace(IMAGE_MARKER, "")
    return tokens.with_image + text
