"""MLLM backbones (tiny LLaVA-Next, mllama, Qwen2-VL built from config classes, offline tokenizer):
forward on text / image / text+image, trainable parts, padding sides, instruction pool mask,
bidirectional attention, global view, max length, local-path loading."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mmtrain.data.schema import Item
from mmtrain.models.mllm import LlavaNextBackbone, MllamaBackbone, Qwen2VLBackbone, TinyMLLM
from mmtrain.toy.tokenizer import train_bpe_tokenizer

BACKBONES = {"llava_next": LlavaNextBackbone, "mllama": MllamaBackbone, "qwen2_vl": Qwen2VLBackbone}
CORPUS = ["a red circle on the left", "a blue square on the right", "find an image that matches",
          "retrieve the caption of this scene", "the same scene but green"] * 8
INSTRUCTION = "find an image that matches"
LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(CORPUS, vocab_size=300).save_pretrained(path)
    return str(path)


def jpeg(seed: int, h: int = 40, w: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def spec(name: str, tok: str, **kwargs):
    kwargs.setdefault("lora", LORA)
    kwargs.setdefault("template", "mm_embed")  # mllama's schema default is mme5
    return BACKBONES[name](tokenizer=tok, tiny=TinyMLLM(), **kwargs)


ITEMS = [Item("a red circle on the left", None, "text", instruction=INSTRUCTION),
         Item(None, jpeg(1), "image"),
         Item("a blue square", jpeg(2, 64, 30), "image,text", instruction=INSTRUCTION),
         Item("the same scene but green and on the right", None, "text")]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_forward_text_image_and_mixed_batches(name, tok):
    backbone = spec(name, tok)
    proc, enc = backbone.build_processor(), backbone.build_encoder().eval()
    with torch.no_grad():
        mixed = enc.encode_queries(proc(ITEMS))
        text_only = enc.encode_candidates(proc([ITEMS[0], ITEMS[3]]))
        image_only = enc.encode_candidates(proc([ITEMS[1], Item(None, jpeg(3), "image")]))
        other_image = enc.encode_candidates(proc([Item(None, jpeg(4), "image")]))
    assert mixed.shape == (4, 64) and torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.norm(dim=-1), torch.ones(4))
    # A batch's rows do not depend on the batch: same item, same vector.
    torch.testing.assert_close(text_only, mixed[[0, 3]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(image_only[0], mixed[1], atol=1e-5, rtol=1e-4)
    # The image is really used (mllama: its tiny gates are opened).
    assert not torch.allclose(other_image[0], image_only[0], atol=1e-4)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_only_lora_projector_and_pooling_head_train(name, tok):
    backbone = spec(name, tok, pooling={"kind": "latent_attention", "num_latents": 8, "num_heads": 2, "head_dim": 8})
    enc = backbone.build_encoder().train()
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    projector = backbone.projector
    assert trainable and all("lora_" in n or f"{projector}.modules_to_save" in n or n.startswith("pooling.")
                             for n in trainable), sorted(trainable)[:10]
    assert any("lora_" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    assert any(n.startswith("pooling.") for n in trainable)
    vision = [p for n, p in enc.named_parameters()
              if f".{backbone.vision_tower}." in n and projector not in n]
    assert len(vision) > 10 and not any(p.requires_grad for p in vision)
    enc.encode_queries(backbone.build_processor()(ITEMS)).sum().backward()
    grads = {n: p.grad for n, p in enc.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(torch.count_nonzero(g) for n, g in grads.items() if "lora_B" in n)  # B = 0 at init: A's grad is 0
    assert any(torch.count_nonzero(g) for n, g in grads.items() if "modules_to_save" in n)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_left_and_right_padding_give_the_same_vectors(name, tok):
    vectors = []
    for side in ("left", "right"):
        backbone = spec(name, tok, padding_side=side)
        proc, enc = backbone.build_processor(), backbone.build_encoder().eval()
        batch = proc(ITEMS)
        real = batch["attention_mask"]
        assert (real[:, 0 if side == "left" else -1] == 0).any()  # the batch is padded on that side
        with torch.no_grad():
            vectors.append(enc.encode_queries(batch))
            alone = torch.cat([enc.encode_queries(proc([item])) for item in ITEMS])
        torch.testing.assert_close(vectors[-1], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vectors[0], vectors[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_pool_mask_drops_exactly_the_instruction_prefix(name, side, tok):
    """Decoded, the dropped tokens are "<s>{instruction}\nQuery:" (the space before the content
    belongs to the content's first BPE token, or stands alone before an image token) and the
    kept ones are the content and EOS."""
    backbone = spec(name, tok, padding_side=side)
    proc = backbone.build_processor()
    batch = proc(ITEMS)
    # Compared without spaces: this byte-level BPE adds a prefix space after special tokens.
    decode = lambda ids: proc.tokenizer.decode(ids.tolist()).replace(" ", "")  # noqa: E731
    for row, item in enumerate(ITEMS):
        ids = batch["input_ids"][row]
        real = batch["attention_mask"][row].bool()
        pooled = batch["pool_mask"][row].bool()
        assert not (pooled & ~real).any()
        dropped = (real & ~pooled).nonzero().flatten()
        if item.instruction is None:
            assert len(dropped) == 0
            continue
        first = real.nonzero().min().item()
        assert dropped.tolist() == list(range(first, first + len(dropped)))  # one leading block
        assert decode(ids[dropped]) == f"<s>{INSTRUCTION}\nQuery:".replace(" ", "")
        kept = decode(ids[pooled]).strip()
        assert kept.endswith(f"{item.text}</s>".replace(" ", ""))
        assert kept.startswith(backbone.style.image_text[:7] if item.image else item.text[:5].replace(" ", ""))


def test_pool_mask_counts_expanded_image_tokens_inside_the_prefix(tok):
    """mmE5's template puts the image before the instruction; LLaVA-Next expands it to 16 tokens
    (tiny global view), all inside the masked prefix."""
    backbone = spec("llava_next", tok, template="mme5")
    proc = backbone.build_processor()
    batch = proc([ITEMS[2]])
    dropped = (batch["attention_mask"] - batch["pool_mask"]).bool()[0]
    decoded = proc.tokenizer.decode(batch["input_ids"][0][dropped].tolist()).replace(" ", "")
    assert decoded == f"<s>{'<image>' * 16}\n{INSTRUCTION}\n".replace(" ", "")
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 16


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_bidirectional_attention_lets_early_tokens_see_later_ones(name, tok):
    ids = torch.tensor([[2, 40, 41, 42, 43, 3]])
    changed = ids.clone()
    changed[0, 4] = 50
    first = {}
    for bidirectional in (False, True):
        enc = spec(name, tok, bidirectional=bidirectional).build_encoder().eval()
        model = enc.base_model
        with torch.no_grad():
            a = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 0]
            b = model(input_ids=changed, attention_mask=torch.ones_like(ids)).last_hidden_state[0, 0]
        first[bidirectional] = torch.allclose(a, b)
    assert first == {False: True, True: False}


def test_llava_next_global_view_is_576_tokens_at_336px():
    """MM-Embed App. A.1: the global 24 x 24 view only, whatever the image's shape."""
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    from mmtrain.models.mllm.llava_next import GlobalViewLlavaNextProcessor
    tokenizer = train_bpe_tokenizer(CORPUS, vocab_size=300, extra_special=("<image>",))
    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6 pinpoints
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                 image_grid_pinpoints=pins)
    proc = GlobalViewLlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                        vision_feature_select_strategy="default", num_additional_image_tokens=1)
    images = [Image.new("RGB", (500, 300)), Image.new("RGB", (200, 640))]
    out = proc(images=images, text=["<image>\na", "<image>"], padding=True, return_tensors="pt")
    counts = (out["input_ids"] == tokenizer.convert_tokens_to_ids("<image>")).sum(1).tolist()
    assert counts == [576, 576]


def test_max_length_cuts_only_the_item_text(tok):
    backbone = spec("llava_next", tok, max_query_length=40, max_candidate_length=60)
    proc = backbone.build_processor()
    long = " ".join(["a red circle on the left"] * 30)
    query, end = proc.fit(Item(long, jpeg(5), "image,text", instruction=INSTRUCTION))
    candidate, _ = proc.fit(Item(long, None, "text"))
    count = lambda s: len(proc.tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert 36 <= count(query) <= 40 and 56 <= count(candidate) <= 60  # <image> counts as one token
    assert query.startswith(f"<s>{INSTRUCTION}\nQuery: <image>\na red") and query.endswith("</s>")
    assert query[:end] == f"<s>{INSTRUCTION}\nQuery: "
    assert (proc([Item(long, jpeg(5), "image,text", instruction=INSTRUCTION)])["input_ids"].shape[1]
            == count(query) - 1 + 16)  # expanded afterwards


def test_templates_render_the_papers_prompts(tok):
    from mmtrain.data.placeholders import render_placeholders

    llava = spec("llava_next", tok).build_processor()
    assert llava.fit(ITEMS[2])[0] == f"<s>{INSTRUCTION}\nQuery: <image>\na blue square</s>"
    assert llava.fit(Item("a cat", jpeg(1), "image,text"))[0] == "<s><image>\na cat</s>"
    mllama = spec("mllama", tok, template="mme5").build_processor()
    rendered, _ = mllama.fit(Item("What is it?", jpeg(1), "image,text", instruction="Represent the given image"))
    assert rendered == "<|image|><s>Represent the given image\nWhat is it?</s>"
    # The data side's placeholder convention (mmtrain/data/placeholders.py) for a leading image.
    from mmtrain.data.placeholders import ImageTokens
    assert rendered.removesuffix("</s>") == render_placeholders(
        "Represent the given image\nWhat is it?", True, ImageTokens("<|image|><s>", "<s>"))
    llava_p = spec("llava_next", tok, template="llava_p").build_processor()
    cirr = "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."
    assert llava_p.fit(Item("make it red", jpeg(1), "image,text", instruction=cirr))[0] == (
        "<s>[image] <image>\nModify this image with make it red\nDesribe modified image in one word:")
    assert llava_p.fit(Item("a cat", None, "text"))[0] == "<s>a cat\nDescribe the above in one word:"
    mscoco = "Find me an everyday image that matches the given caption."
    assert llava_p.fit(Item("a cat.", None, "text", instruction=mscoco))[0] == (
        "<s>[image] a cat.\nDescribe the everyday caption in one word:")


def test_loads_from_a_local_directory_and_passes_trust_remote_code_only_when_set(tok, tmp_path, monkeypatch):
    backbone = spec("llava_next", tok, lora=None)
    enc, proc = backbone.build_encoder().eval(), backbone.build_processor()
    enc.base_model.save_pretrained(tmp_path)
    proc.hf_processor.save_pretrained(tmp_path)  # saved as the stock LlavaNextProcessor
    loaded = LlavaNextBackbone(pretrained=str(tmp_path), lora=None)
    enc2, proc2 = loaded.build_encoder().eval(), loaded.build_processor()
    with torch.no_grad():
        torch.testing.assert_close(enc2.encode_queries(proc2(ITEMS)), enc.encode_queries(proc(ITEMS)))
    import transformers
    seen = []
    real = transformers.AutoModel.from_pretrained
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained",
                        lambda *a, **k: seen.append(k["trust_remote_code"]) or real(*a, **k))
    monkeypatch.setattr("mmtrain.models.mllm.backbone.AutoModel", transformers.AutoModel)
    loaded.build_encoder()
    LlavaNextBackbone(pretrained=str(tmp_path), lora=None, trust_remote_code=True).build_encoder()
    assert seen == [False, True]


def test_gradient_checkpointing_dora_and_bf16_options(tok):
    proc = spec("llava_next", tok).build_processor()
    batch = proc(ITEMS)
    grads = []
    for checkpointing in (False, True):
        enc = spec("llava_next", tok, gradient_checkpointing=checkpointing).build_encoder().train()
        enc.encode_queries(batch).sum().backward()
        grads.append([p.grad for p in enc.parameters() if p.requires_grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    dora = spec("llava_next", tok, lora={**LORA, "use_dora": True}).build_encoder()
    assert any("lora_magnitude_vector" in n and p.requires_grad for n, p in dora.named_parameters())
    bf16 = spec("llava_next", tok, dtype="bfloat16").build_encoder().eval()
    assert next(bf16.base_model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        out = bf16.encode_queries(batch)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
