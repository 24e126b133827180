"""CLIP score fusion against CLIP itself: emb = normalize(text_emb * has_text + image_emb * has_image)."""

from __future__ import annotations

import io
import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mmtrain
from mmtrain.data.collate import TrainCollator
from mmtrain.data.schema import Item, TrainExample
from mmtrain.export import EXPORT_FILE, export
from mmtrain.lightning.module import RetrievalModule
from mmtrain.models.clip_sf import ClipSFBackbone, TinyClip
from mmtrain.models.loss import ContrastiveLoss
from mmtrain.toy.tokenizer import train_bpe_tokenizer

CORPUS = ["a red circle on the left", "a blue square on the right", "find an image that matches",
          "retrieve the caption of this scene", "the same scene but green"] * 8


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(CORPUS, vocab_size=300).save_pretrained(path)
    torch.manual_seed(0)
    return ClipSFBackbone(tokenizer=str(path), tiny=TinyClip(), max_text_length=32)


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def reference(encoder, processor, text: str | None, image: bytes | None) -> torch.Tensor:
    """One item straight through CLIP's own towers, without the fusion code."""
    clip, out = encoder.clip, 0
    if text:
        tok = processor.tokenizer([text], return_tensors="pt")
        out = out + clip.get_text_features(**tok).pooler_output[0]
    if image is not None:
        px = processor.image_processor([Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")
        out = out + clip.get_image_features(pixel_values=px["pixel_values"]).pooler_output[0]
    return F.normalize(out, dim=-1)


def test_fusion_matches_clip_towers(backbone):
    enc, proc = backbone.build_encoder().eval(), backbone.build_processor()
    items = [
        Item("a red circle on the left", None, "text"),
        Item(None, jpeg(1), "image"),
        Item("a blue square", jpeg(2), "image,text"),
        Item(None, jpeg(3), "image", instruction="find an image that matches"),   # query, image only
        Item("the same scene but green", jpeg(4), "image,text", instruction="retrieve the caption"),
    ]
    with torch.no_grad():
        got = enc.encode_queries(proc(items))
        for i, it in enumerate(items):
            text = f"{it.instruction} {it.text or ''}".strip() if it.instruction else it.text
            torch.testing.assert_close(got[i], reference(enc, proc, text, it.image), atol=1e-5, rtol=1e-4)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(items)))


def test_instruction_changes_query_but_not_candidate(backbone):
    enc, proc = backbone.build_encoder().eval(), backbone.build_processor()
    plain = Item("a red circle", None, "text")
    instructed = Item("a red circle", None, "text", instruction="find an image that matches")
    with torch.no_grad():
        a, b = enc.encode_queries(proc([plain, instructed]))
    assert not torch.allclose(a, b)
    assert proc.text_of(instructed) == "find an image that matches a red circle"


def test_single_modality_batches_keep_both_towers_in_graph(backbone):
    """A text-only batch still gives every vision parameter a gradient (exactly zero), so DDP needs
    no find_unused_parameters; and the dummy image row does not change the embeddings."""
    enc, proc = backbone.build_encoder(), backbone.build_processor()
    batch = proc([Item("a red circle", None, "text"), Item("a blue square", None, "text")])
    assert batch["image_index"].tolist() == [-1]
    emb = enc.encode_candidates(batch)
    emb.sum().backward()
    vision = [p for n, p in enc.named_parameters() if "vision" in n or "visual_projection" in n]
    text = [p for n, p in enc.named_parameters() if "text_model" in n or "text_projection" in n]
    assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in vision)
    assert any(torch.count_nonzero(p.grad) > 0 for p in text)
    with torch.no_grad():
        torch.testing.assert_close(emb[1], reference(enc, proc, "a blue square", None), atol=1e-5, rtol=1e-4)


def test_load_by_local_path_round_trip(backbone, tmp_path):
    """`pretrained` loads model, tokenizer and image processor from a directory (as from a hub id)."""
    enc, proc = backbone.build_encoder().eval(), backbone.build_processor()
    enc.clip.save_pretrained(tmp_path)
    proc.tokenizer.save_pretrained(tmp_path)
    proc.image_processor.save_pretrained(tmp_path)
    loaded = ClipSFBackbone(pretrained=str(tmp_path), max_text_length=32)
    enc2, proc2 = loaded.build_encoder().eval(), loaded.build_processor()
    items = [Item("a red circle", jpeg(5), "image,text")]
    with torch.no_grad():
        torch.testing.assert_close(enc2.encode_candidates(proc2(items)), enc.encode_candidates(proc(items)))


def test_spec_needs_a_source():
    with pytest.raises(ValueError, match="pretrained"):
        ClipSFBackbone(tokenizer=None, tiny=TinyClip())


def test_export_then_load_encodes_like_the_trained_module(backbone, tmp_path):
    """A CLIP_SF module after one SGD step exports (weights + tokenizer + image processor in one local
    directory) and ``mmtrain.load(export).encode`` gives the module's own embeddings."""
    module = RetrievalModule(backbone, ContrastiveLoss(temperature=0.05), partial(torch.optim.SGD, lr=0.5))
    module.configure_model()
    proc = backbone.build_processor()
    examples = [TrainExample(Item("a red circle", jpeg(10 + i) if i % 2 else None, "x", instruction="find"),
                             Item(None if i % 2 else "a blue square", jpeg(20 + i), "x", id=i), [], [i])
                for i in range(4)]
    module.train()
    module.training_step(TrainCollator(proc)(examples), 0).backward()
    with torch.no_grad():
        for p in module.encoder.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    encoder = module.encoder.eval()

    out = export(encoder, tmp_path / "export", merged=True)
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["backbone"]["pretrained"] == "model" and meta["backbone"]["tiny"] is None
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "tokenizer.json").is_file()
    embedder = mmtrain.load(out)
    inputs = ["a red circle on the left", Image.open(io.BytesIO(jpeg(1))), ("a blue square", jpeg(2))]
    items = [Item("a red circle on the left", None, "text"), Item(None, jpeg(1), "image"),
             Item("a blue square", jpeg(2), "image,text")]
    for instruction in (None, "find an image that matches"):
        with torch.no_grad():
            expected = encoder.encode_queries(proc([Item(i.text, i.image, i.modality, instruction) for i in items]))
        got = embedder.encode(inputs, instruction=instruction, batch_size=2)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    merged = mmtrain.load(out, merged=True).encode(inputs)
    assert torch.all(F.cosine_similarity(merged, embedder.encode(inputs), dim=-1) > 0.99)  # bf16 rounding only
