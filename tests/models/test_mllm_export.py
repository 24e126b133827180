"""Export (adapter + processor + config, optional merged model) and ``mmtrain.load(path).encode``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from transformers import AutoModel, AutoTokenizer

import mmtrain
from mmtrain.data.schema import Item
from mmtrain.export import EXPORT_FILE, export, from_run
from mmtrain.models.mllm import LlavaNextBackbone, MllamaBackbone, Qwen2VLBackbone
from mmtrain.toy.tokenizer import train_bpe_tokenizer

BACKBONES = {"llava_next": LlavaNextBackbone, "mllama": MllamaBackbone, "qwen2_vl": Qwen2VLBackbone}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2}
POOL = {"kind": "latent_attention", "num_latents": 8, "num_heads": 2, "head_dim": 8}
INSTRUCTION = "find an image that matches"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(["a red circle on the left", "a blue square on the right", INSTRUCTION] * 8,
                        vocab_size=300).save_pretrained(path)
    return str(path)


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def trained(name: str, tok: str, **kwargs):
    """A tiny encoder whose LoRA, projector and pooling head are no longer at their initial values."""
    kwargs.setdefault("pooling", POOL)
    backbone = BACKBONES[name](tokenizer=tok, tiny=TINY, lora={"r": 4, "alpha": 8, "dropout": 0.1}, **kwargs)
    encoder = backbone.build_encoder()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return backbone, encoder.eval()


INPUTS = ["a red circle on the left", Image.open(io.BytesIO(jpeg(1))), ("a blue square", jpeg(2)),
          {"txt": "on the right", "img": None}]


def reference(backbone, encoder, instruction):
    proc = backbone.build_processor()
    items = [Item("a red circle on the left", None, "text", instruction), Item(None, jpeg(1), "image", instruction),
             Item("a blue square", jpeg(2), "image,text", instruction), Item("on the right", None, "text", instruction)]
    with torch.no_grad():
        return encoder.encode_queries(proc(items))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_export_then_load_encodes_the_same(name, tok, tmp_path):
    backbone, encoder = trained(name, tok)
    out = export(encoder, tmp_path / "export", config={"name": "probe", "model": {"x": 1}})
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert {"adapter", "pooling.safetensors", "processor", "base", "config.yaml"} <= set(meta["files"])
    assert meta["backbone"]["lora"]["r"] == 4 and meta["backbone"]["pretrained"] == "base"
    embedder = mmtrain.load(out)
    for instruction in (None, INSTRUCTION):
        got = embedder.encode(INPUTS, instruction=instruction, batch_size=3)
        torch.testing.assert_close(got, reference(backbone, encoder, instruction), atol=1e-5, rtol=1e-4)


def test_merged_model_loads_with_plain_transformers(tok, tmp_path):
    """merged/ is a plain bf16 transformers directory; its last-token state of a text prompt, read
    with AutoModel + AutoTokenizer alone, is the exported encoder's candidate vector."""
    backbone, encoder = trained("llava_next", tok, pooling={"kind": "last"})
    out = export(encoder, tmp_path / "export", merged=True)
    assert next(AutoModel.from_pretrained(out / "merged").parameters()).dtype == torch.bfloat16
    model = AutoModel.from_pretrained(out / "merged", dtype=torch.float32)  # compute as mmtrain.load does
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    ids = tokenizer("<s>a red circle on the left</s>", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        plain = F.normalize(model(**ids).last_hidden_state[0, -1].float(), dim=-1)
    adapter = mmtrain.load(out).encode(["a red circle on the left"])[0]
    merged = mmtrain.load(out, merged=True).encode(["a red circle on the left"])[0]
    torch.testing.assert_close(merged, plain, atol=1e-6, rtol=1e-5)
    assert F.cosine_similarity(merged, adapter, dim=0) > 0.99  # bf16 rounding only


def test_export_from_a_run_checkpoint(tok, tmp_path):
    backbone, encoder = trained("llava_next", tok)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model_cfg = {"_target_": "mmtrain.models.mllm.LlavaNextBackbone", "tokenizer": tok, "tiny": TINY,
                 "lora": {"r": 4, "alpha": 8, "dropout": 0.1}, "pooling": POOL}
    OmegaConf.save(OmegaConf.create({"name": "r", "model": model_cfg}), run / "config.yaml")
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}},
               run / "checkpoints" / "last.ckpt")
    out = from_run(run, tmp_path / "export")
    got = mmtrain.load(out).encode(INPUTS, instruction=INSTRUCTION)
    torch.testing.assert_close(got, reference(backbone, encoder, INSTRUCTION), atol=1e-5, rtol=1e-4)
    assert OmegaConf.load(out / "config.yaml").model.lora.r == 4
