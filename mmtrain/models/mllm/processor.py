"""``list[Item]`` -> MLLM inputs: prompt rendering, max length, the backbone's HF processor, pool mask.

Runs in DataLoader workers; picklable (it holds the HF processor and the backbone *spec*, never a
model). Steps per batch:

1. Render each item with the template (prompts.py); queries are the items with an instruction.
2. Fit the max length (MM-Embed App. A.1: 128 tokens, "an image only occupies a single token"): the
   prompt is counted with each image as its placeholder token(s), before expansion, and only the
   item's own text is cut (the instruction and the one-word / EOS suffix survive).
3. Write BOS / EOS explicitly (tokenizers differ in what they add by themselves, so the HF processor
   runs with ``add_special_tokens=False``); mllama's BOS goes after leading images
   (``<|image|><|begin_of_text|>...``, data-formats.md §11).
4. Run the backbone's HF processor (it expands image placeholders and processes pixels).
5. ``pool_mask`` = attention mask without the instruction tokens: the tokens ending at or before the
   end of the instruction prefix, located with the tokenizer's character offsets (shifted by the
   processor's placeholder expansion when an image sits inside the prefix).

Output: the HF processor's tensors (``input_ids``, ``attention_mask``, pixel tensors, ...) plus
``pool_mask`` (n, L) and ``images_per_item`` (n,), which GradCache uses to cut a batch into chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmtrain.data.schema import Item
from mmtrain.models.encoder import decode_image
from mmtrain.models.mllm.prompts import Rendered, Template

if TYPE_CHECKING:
    from mmtrain.models.mllm.backbone import MLLMBackbone


class MLLMProcessor:
    def __init__(self, hf_processor: Any, backbone: MLLMBackbone, template: Template):
        self.hf_processor = hf_processor
        self.tokenizer = hf_processor.tokenizer
        self.backbone = backbone
        self.template = template

    def save_pretrained(self, path: str | Path) -> None:
        self.hf_processor.save_pretrained(path)

    # ------------------------------------------------------------------ rendering
    def wrap(self, rendered: Rendered) -> tuple[str, int]:
        """(prompt with BOS / EOS, instruction end in the prompt's characters)."""
        body = rendered.text.rstrip()  # a trailing image separator before EOS is not content
        end = min(rendered.instruction_end, len(body))
        bos = self.tokenizer.bos_token or ""
        at = 0
        if self.backbone.bos_after_leading_image:
            image = self.backbone.style.image_text
            while body.startswith(image, at):
                at += len(image)
        if bos and bos not in body:
            body = body[:at] + bos + body[at:]
            end = end + len(bos) if end > 0 else 0  # BOS lands inside the instruction prefix
        eos = (self.tokenizer.eos_token or "") if rendered.append_eos else ""
        return body + eos, end

    def _length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def fit(self, item: Item) -> tuple[str, int]:
        """The wrapped prompt of ``item``, its text cut so the prompt fits the max length."""
        limit = (self.backbone.max_query_length if item.instruction is not None
                 else self.backbone.max_candidate_length)
        text = item.text or ""
        for _ in range(4):  # BPE merges at the cut can shift the count by a token: re-check
            prompt, end = self.wrap(self.template.render(item, text, self.backbone.style))
            excess = self._length(prompt) - limit
            if excess <= 0 or not text:
                return prompt, end
            offsets = self.tokenizer(text, add_special_tokens=False,
                                     return_offsets_mapping=True)["offset_mapping"]
            keep = max(0, len(offsets) - excess)
            text = text[: offsets[keep][0]].rstrip() if keep < len(offsets) else text[:-1]
        return prompt, end  # still over only when the fixed part alone is longer than the limit

    # ------------------------------------------------------------------ batch
    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        prompts, ends, images = [], [], []
        for item in items:
            prompt, end = self.fit(item)
            prompts.append(prompt)
            ends.append(end)
            images.append([decode_image(item.image)] if item.image is not None else [])
        kwargs: dict[str, Any] = dict(text=prompts, return_tensors="pt", padding=True,
                                      add_special_tokens=False, return_offsets_mapping=True)
        if any(images):
            kwargs["images"] = self.backbone.images_argument(images)
            if self.backbone.expands_image_tokens:
                kwargs["return_text_replacement_offsets"] = True
        out = dict(self.hf_processor(**kwargs))
        offsets = out.pop("offset_mapping")
        replacements = out.pop("text_replacement_offsets", None) or [[] for _ in items]
        # Each placeholder expanded before the instruction end moves that end to the right.
        shifted = [end + sum(len(r["replacement"]) - (r["span"][1] - r["span"][0])
                             for r in repl if r["span"][1] <= end)
                   for end, repl in zip(ends, replacements)]
        end = torch.tensor(shifted, dtype=torch.long).unsqueeze(1)
        mask = out["attention_mask"].bool()
        instruction = mask & (end > 0) & (offsets[..., 1] <= end)
        out["pool_mask"] = (mask & ~instruction).long()
        out["images_per_item"] = torch.tensor([len(i) for i in images], dtype=torch.long)
        return self.backbone.postprocess_inputs(out)
