"""LoRA on the language model via peft; the projector trained in full; everything else frozen.

MM-Embed §5.1 trains "the vision-language projector + LoRA (r=8, alpha=64) on the LLM" with the
vision tower frozen; mmE5 uses LoRA r=8 (its script: alpha 64, dropout 0.1, DoRA). Target modules
are not given by either paper; the default is all seven linear projections of every LLM layer
(Tevatron's default, recipes.md §2.2), which also covers mllama's cross-attention projections.

peft does the work: ``target_modules`` is a regex restricted to the language model (the vision
towers have ``q_proj`` too), and the projector goes into ``modules_to_save`` so that it is trained
in full *and* saved inside the adapter (``PeftModel.save_pretrained`` / ``from_pretrained``
restore it with the LoRA weights, and ``merge_and_unload`` folds both into the base model).
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from mmtrain.models.config import LoraSchema


def lora_target_regex(language_model_prefix: str, target_modules: list[str]) -> str:
    """peft full-matches this against module names relative to the model root."""
    names = "|".join(re.escape(t) for t in target_modules)
    return rf"{re.escape(language_model_prefix)}\..*\.({names})"


def apply_lora(model: torch.nn.Module, settings: LoraSchema, language_model_prefix: str,
               modules_to_save: list[str]) -> PeftModel:
    """Wrap ``model`` with LoRA on its language model; ``modules_to_save`` (the projector) train in
    full. peft freezes everything else, vision tower included."""
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=lora_target_regex(language_model_prefix, list(settings.target_modules)),
        use_dora=settings.use_dora, init_lora_weights=settings.init_lora_weights,
        modules_to_save=list(modules_to_save))
    return get_peft_model(model, config)


def freeze_except(model: torch.nn.Module, trainable_prefixes: list[str]) -> None:
    """Without LoRA: train only the modules under ``trainable_prefixes`` (e.g. the projector)."""
    for name, param in model.named_parameters():
        param.requires_grad_(any(name == p or name.startswith(p + ".") for p in trainable_prefixes))
