"""Generator backends and the synthesis config: composition, construction, a tiny local MLLM."""

from __future__ import annotations

import io
import json

import pytest
import torch
from conftest import synth_cfg
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from PIL import Image

from mmtrain.synth.generators import (
    ChatRequest,
    GeneratorConfigError,
    ImagePart,
    OpenAIChatGenerator,
    TransformersGenerator,
)
from mmtrain.synth.pipeline import synthesize


def test_config_composes_and_instantiates(tmp_path, corpus_dir):
    cfg = synth_cfg(tmp_path, corpus_dir, 3)
    gen = instantiate(cfg.generator)
    assert isinstance(gen, OpenAIChatGenerator) and gen.max_concurrency == 8 and gen.client.max_retries == 0
    assert gen.describe()["model"] == "fake-mllm"
    assert instantiate(cfg.retriever.embedder).describe() == {"kind": "pixel", "size": 8}
    local = synth_cfg(tmp_path, corpus_dir, 3, "synth/generator@generator=transformers", "generator.model=/m")
    assert isinstance(instantiate(local.generator), TransformersGenerator)  # built lazily: no model read
    enc = synth_cfg(tmp_path, corpus_dir, 3, "synth/embedder@retriever.embedder=encoder",
                    "+model@retriever.embedder.model=clip_sf_large")
    assert enc.retriever.embedder.model.pretrained == "openai/clip-vit-large-patch14"
    assert type(instantiate(enc.retriever.embedder)).__name__ == "EncoderEmbedder"


@pytest.mark.parametrize("override", ["generator.temprature=1.0", "output.flush_evry=3", "retriever.top_k=2",
                                      "validation.max_attempts=many"])
def test_misspelled_or_mistyped_key_fails(tmp_path, corpus_dir, override):
    with pytest.raises(ConfigCompositionException):
        synth_cfg(tmp_path, corpus_dir, 3, override)


def test_hosted_api_needs_a_key(monkeypatch):
    monkeypatch.delenv("MY_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(GeneratorConfigError, match=r"set \$MY_KEY"):
        OpenAIChatGenerator("gpt-4o-2024-08-06", api_key_env="MY_KEY")
    monkeypatch.setenv("MY_KEY", "sk-test")
    assert OpenAIChatGenerator("gpt-4o-2024-08-06", api_key_env="MY_KEY").client.api_key == "sk-test"


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    """A from-config LLaVA (~50K parameters) with an offline tokenizer and a minimal chat template."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from mmtrain.toy.tokenizer import train_bpe_tokenizer

    path = tmp_path_factory.mktemp("tiny_llava")
    tok = train_bpe_tokenizer(['{"sample": "a red square"}', "describe the image"] * 10, vocab_size=300,
                              extra_special=("<image>",))
    template = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                  crop_size={"height": 32, "width": 32}),
                               tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                                                      vision_feature_layer=-1))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_transformers_generator_generates_reproducibly(tiny_llava):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buf, "JPEG")
    gen = TransformersGenerator(str(tiny_llava), device="cpu", dtype="float32", max_new_tokens=6)
    request = ChatRequest(("[query image]", ImagePart("query image", buf.getvalue()), "describe the image"),
                          seed=11, request_id="r")
    first = gen.generate(request)
    assert isinstance(first, str) and first == gen.generate(request)  # the seed is set per request
    messages = gen.messages(request)
    assert [c["type"] for c in messages[0]["content"]] == ["text", "image", "text"]


def test_pipeline_with_the_local_backend(tmp_path, corpus_dir, tiny_llava):
    """The local backend through the whole pipeline: a random tiny model cannot write the JSON, so every
    sample is rejected (invalid_json) with its answer kept; the same seed gives the same answers."""
    def run(out):
        cfg = synth_cfg(out, corpus_dir, 3, "synth/generator@generator=transformers",
                        f"generator.model={tiny_llava}", "generator.device=cpu", "generator.dtype=float32",
                        "generator.max_new_tokens=6", "validation.max_attempts=2",
                        "validation.abort_after_consecutive_rejections=0")
        manifest = synthesize(cfg)
        return manifest, [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]

    manifest, rejected = run(tmp_path / "a")
    assert manifest["counts"]["rejected"] == 3 and manifest["counts"]["attempts"] == 6
    assert manifest["counts"]["failures_by_reason"] == {"invalid_json": 6} and manifest["shards"] is None
    assert all(r["reason"] == "invalid_json" and r["last_response_excerpt"] is not None for r in rejected)
    _, again = run(tmp_path / "b")
    assert [r["last_response_excerpt"] for r in again] == [r["last_response_excerpt"] for r in rejected]
