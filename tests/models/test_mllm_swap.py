"""LLM swap (MM-Embed's NV-Embed-v1 variant): the language model takes another model's weights
exactly; the vision tower and projector keep theirs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModel

from mmtrain.models.mllm import LlavaNextBackbone, TinyMLLM
from mmtrain.models.pooling import LatentAttentionPooling
from mmtrain.toy.tokenizer import train_bpe_tokenizer

POOL = {"kind": "latent_attention", "num_latents": 8, "num_heads": 2, "head_dim": 8}


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(["a red circle on the left", "a blue square"] * 10, vocab_size=280).save_pretrained(path)
    return str(path)


def llava(tok: str, **kwargs):
    return LlavaNextBackbone(tokenizer=tok, tiny=TinyMLLM(), lora=None, **kwargs).build_encoder()


def donor_for(reference) -> torch.nn.Module:
    """A Mistral of the same shape with other weights (what NV-Embed-v1's LLM is to LLaVA-Next's)."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return AutoModel.from_config(reference.config.text_config)


def test_language_model_takes_the_donors_weights_exactly(tok, tmp_path):
    reference = llava(tok).base_model
    donor = donor_for(reference)
    donor.save_pretrained(tmp_path / "donor")  # a plain MistralModel checkpoint: no prefix
    swapped = llava(tok, llm_swap={"source": str(tmp_path / "donor")}).base_model
    got = swapped.language_model.state_dict()
    assert set(got) == set(donor.state_dict())
    for name, tensor in donor.state_dict().items():
        assert torch.equal(got[name], tensor), name
        assert not torch.equal(reference.language_model.state_dict()[name], tensor) or tensor.ndim < 2
    for prefix in ("vision_tower", "multi_modal_projector"):
        for name, tensor in reference.get_submodule(prefix).state_dict().items():
            assert torch.equal(swapped.get_submodule(prefix).state_dict()[name], tensor), name


def test_nv_embed_layout_prefixes_fewer_vocab_rows_and_latent_head(tok, tmp_path):
    """NV-Embed-v1 keeps its Mistral under ``embedding_model.`` (32000 rows, LLaVA-Next has 2 more)
    and its pooling head under ``latent_attention_model.``."""
    reference = llava(tok, pooling=POOL)
    donor = donor_for(reference.base_model)
    rows = donor.embed_tokens.weight.shape[0] - 2
    head = LatentAttentionPooling(64, num_latents=8, num_heads=2, head_dim=8)
    state = {f"embedding_model.{k}": v.contiguous() for k, v in donor.state_dict().items()}
    state["embedding_model.embed_tokens.weight"] = donor.embed_tokens.weight[:rows].clone()
    state.update({f"latent_attention_model.{k}": v.contiguous() for k, v in head.state_dict().items()})
    (tmp_path / "nv").mkdir()
    save_file(state, str(tmp_path / "nv" / "model.safetensors"))
    swap = {"source": str(tmp_path / "nv"), "prefix": "embedding_model.",
            "pooling_prefix": "latent_attention_model."}
    swapped = llava(tok, pooling=POOL, llm_swap=swap)
    emb = swapped.base_model.language_model.embed_tokens.weight
    assert torch.equal(emb[:rows], donor.embed_tokens.weight[:rows])
    assert torch.equal(emb[rows:], reference.base_model.language_model.embed_tokens.weight[rows:])
    assert torch.equal(swapped.base_model.language_model.layers[1].mlp.down_proj.weight,
                       donor.layers[1].mlp.down_proj.weight)
    for name, tensor in head.state_dict().items():
        assert torch.equal(swapped.pooling.state_dict()[name], tensor), name


def test_swap_refuses_an_incomplete_or_mismatched_source(tok, tmp_path):
    reference = llava(tok).base_model
    state = {k: v.contiguous() for k, v in donor_for(reference).state_dict().items()}
    del state["norm.weight"]
    (tmp_path / "a").mkdir()
    save_file(state, str(tmp_path / "a" / "model.safetensors"))
    with pytest.raises(ValueError, match="missing.*norm.weight"):
        llava(tok, llm_swap={"source": str(tmp_path / "a")})
    state["norm.weight"] = torch.ones(7)
    (tmp_path / "b").mkdir()
    save_file(state, str(tmp_path / "b" / "model.safetensors"))
    with pytest.raises(ValueError, match="shape"):
        llava(tok, llm_swap={"source": str(tmp_path / "b")})
