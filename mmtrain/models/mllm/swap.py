"""LLM swap (MM-Embed §5.1, "NV-Embed-v1"): load a text-embedding LLM's weights into the MLLM's
language model, keeping the vision tower and the projector.

The source is a hub id or a local directory holding ``*.safetensors`` (or ``*.bin``) shards. Its
weights are read tensor by tensor and copied into the target module's state dict, after removing
``prefix`` from the source names: NV-Embed-v1 stores its Mistral under ``embedding_model.`` and its
pooling head under ``latent_attention_model.``; a plain ``MistralModel`` checkpoint has no prefix, a
``MistralForCausalLM`` one has ``model.``. Reading the files directly (rather than instantiating the
source model) needs no ``trust_remote_code`` for NV-Embed's custom class and never holds two models.

Every target tensor must be covered and every prefixed source tensor must land, except the
embedding matrix, which may have fewer rows in the source: LLaVA-Next's Mistral vocabulary is
NV-Embed's 32000 tokens plus ``<image>`` and ``<pad>``; the extra rows keep the MLLM's values
(``<image>`` embeddings are replaced by image features, pad is masked).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
ROW_EXTENDABLE = ("embed_tokens.weight",)


def _weight_files(source: str, revision: str | None = None) -> list[Path]:
    path = Path(source)
    if not path.is_dir():
        from huggingface_hub import snapshot_download
        path = Path(snapshot_download(source, revision=revision,
                                      allow_patterns=["*.safetensors", "*.json", "*.bin"]))
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weights in {path}")
    return files


def _tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    yield key, sf.get_tensor(key)
        else:
            yield from torch.load(f, map_location="cpu", weights_only=True).items()


@torch.no_grad()
def load_into(target: nn.Module, source: str, prefix: str = "", revision: str | None = None) -> int:
    """Copy ``source``'s tensors named ``prefix + <target name>`` into ``target``; returns how many.
    Raises when a target tensor is not covered or a prefixed source tensor has no target."""
    state = target.state_dict()
    persistent = set(state)
    loaded, unexpected = set(), []
    for key, value in _tensors(_weight_files(source, revision)):
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name not in state:
            unexpected.append(key)
            continue
        dest = state[name]
        if value.shape != dest.shape:
            extendable = name.endswith(ROW_EXTENDABLE) and value.shape[1:] == dest.shape[1:]
            if not (extendable and value.shape[0] <= dest.shape[0]):
                raise ValueError(f"LLM swap: {key} has shape {tuple(value.shape)}, the target "
                                 f"{name} has {tuple(dest.shape)}")
            log.info("LLM swap: %s: %d of %d rows from %s, the rest kept", name, value.shape[0],
                     dest.shape[0], source)
            dest = dest[: value.shape[0]]
        dest.copy_(value.to(dest.dtype))
        loaded.add(name)
    missing = sorted(persistent - loaded)
    if missing or unexpected:
        raise ValueError(f"LLM swap from {source!r} (prefix {prefix!r}): missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}")
    return len(loaded)
