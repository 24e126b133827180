"""Test support for the evaluation suite: a deterministic fake backbone, JPEG helpers, a tiny LLaVA-Next.

The fake backbone makes rankings hand-computable: a text is ``table[text]`` when listed, else the sum
of the colour words it names (red = (1,0,0), yellow = (1,1,0), ...), else a fixed junk direction; an
image is its mean RGB colour; an image+text item sums both; everything is L2-normalised. It records
every item it encodes (to count cache hits and check instructions).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmtrain.data.schema import Item
from mmtrain.eval.benchmarks.context import EvalContext

DIM = 8
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255)}


def jpeg(colour: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=100)
    return buf.getvalue()


def write_jpeg(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(colour))
    return str(path)


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


class FakeProcessor:
    def __init__(self, table: dict[str, np.ndarray], log: list[Item]):
        self.table, self.log = table, log

    def text_vec(self, text: str) -> np.ndarray:
        if text in self.table:
            return np.asarray(self.table[text], dtype=np.float32)
        words = [w.strip(".,;:!?") for w in text.lower().split()]
        v = np.zeros(DIM, dtype=np.float32)
        for w in words:
            if w in COLOURS:
                v[:3] += np.array(COLOURS[w], dtype=np.float32) / 255.0
        if not v.any():
            v[DIM - 1] = 1.0  # junk direction: unrelated to every colour
        return v

    @staticmethod
    def image_vec(data: bytes) -> np.ndarray:
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
        v = np.zeros(DIM, dtype=np.float32)
        v[:3] = arr.reshape(-1, 3).mean(0)
        return v

    def __call__(self, items: list[Item]) -> dict[str, torch.Tensor]:
        self.log.extend(items)
        vecs = []
        for it in items:
            v = np.zeros(DIM, dtype=np.float32)
            if it.text:
                t = self.text_vec(it.text)
                v += t / np.linalg.norm(t)
            if it.image is not None:
                i = self.image_vec(it.image)
                v += i / max(np.linalg.norm(i), 1e-12)
            vecs.append(v / max(np.linalg.norm(v), 1e-12))
        return {"vec": torch.from_numpy(np.stack(vecs))}


class FakeEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, so .to(device) and state_dict work

    def encode_queries(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs["vec"] + 0.0 * self.anchor

    encode_candidates = encode_queries


class FakeBackbone:
    def __init__(self, table: dict[str, np.ndarray] | None = None):
        self.table = dict(table or {})
        self.log: list[Item] = []

    def build_processor(self) -> FakeProcessor:
        return FakeProcessor(self.table, self.log)

    def build_encoder(self) -> FakeEncoder:
        return FakeEncoder()


def fake_context(table: dict[str, np.ndarray] | None = None, cache=None, run_dir: Path | str = ".",
                 reranker=None) -> tuple[EvalContext, FakeBackbone]:
    bb = FakeBackbone(table)
    ctx = EvalContext(bb.build_encoder(), bb.build_processor(), model_fp="fake", cache=cache, batch_size=4,
                      run_dir=run_dir, reranker=reranker)
    return ctx, bb


def test_fake_backbone_is_what_the_tests_assume():
    ctx, _ = fake_context({"alpha": unit(0, 0, 0, 1)})
    items = [Item("a red photo", None, "text"), Item(None, jpeg((255, 0, 0)), "image"),
             Item("a yellow photo", None, "text"), Item("alpha", None, "text"), Item("nothing", None, "text")]
    emb = ctx.encode(items, "candidate")
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert emb[0] @ emb[1] > 0.999 and abs(emb[0] @ emb[2] - 2 ** -0.5) < 1e-6
    assert emb[3] @ emb[0] == 0.0 and emb[4] @ emb[0] == 0.0


def build_tiny_llava(out_dir: Path) -> Path:
    """A ~150K-parameter LLaVA-NeXT from config with an offline BPE tokenizer, saved like a hub model
    (environment.md §2): mechanics only, its answers are noise."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextProcessor, PreTrainedTokenizerFast)
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    from mmtrain.eval.reranker import RERANK_PROMPTS

    corpus = list(RERANK_PROMPTS.values()) * 3 + ["True", "False", "a red car", "make it green"] * 5
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                 eos_token="</s>")
    hf.add_special_tokens({"additional_special_tokens": ["<image>"]})
    pins = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8),
        text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=len(hf), pad_token_id=hf.pad_token_id),
        image_token_index=hf.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pins,
        vision_feature_select_strategy="default")
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=pins)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=hf, patch_size=8, vision_feature_select_strategy="default",
                              image_token="<image>", num_additional_image_tokens=1)
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    return out_dir
