"""Image corpus loading and positive / hard-negative retrieval (fake, pixel and encoder embedders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS_SIZE, make_corpus
from PIL import Image

from mmtrain.synth.corpus import ImageCorpus
from mmtrain.synth.retrieval import EncoderEmbedder, NeighbourIndex, PixelEmbedder


class TableEmbedder:
    """Hand-set vectors by file name; counts its calls (to see the cache work)."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls = 0

    def embed(self, files):
        self.calls += 1
        rows = np.array([self.vectors[Path(f).name] for f in files], dtype=np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def describe(self):
        return {"kind": "table", "n": len(self.vectors)}


def test_corpus_from_directory_and_list(tmp_path, corpus_dir):
    names = make_corpus(tmp_path / "c")
    (tmp_path / "c" / "notes.txt").write_text("not an image")
    corpus = ImageCorpus.load(tmp_path / "c")
    assert corpus.paths == names and len(corpus) == CORPUS_SIZE
    listing = tmp_path / "c" / "list.txt"
    listing.write_text("# chosen images\n" + "\n".join(reversed(names[:5])) + "\n\n")
    listed = ImageCorpus.load(listing)
    assert listed.paths == list(reversed(names[:5]))  # file order kept
    assert listed.path(names[0]) == tmp_path / "c" / names[0]
    assert listed.fingerprint() != ImageCorpus.load(tmp_path / "c").fingerprint()


def test_corpus_errors(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "bad.txt").write_text("img01.jpg\nmissing/a.jpg\nimg02.jpg\nnope.png\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 4 listed images do not exist(.|\n)*bad.txt:2: missing/a.jpg"):
        ImageCorpus.load(tmp_path / "bad.txt")
    (tmp_path / "dup.txt").write_text("img01.jpg\nimg01.jpg\n")
    with pytest.raises(ValueError, match="more than once"):
        ImageCorpus.load(tmp_path / "dup.txt")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ImageCorpus.load(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        ImageCorpus.load(tmp_path / "empty")


def test_neighbours_against_brute_force(tmp_path):
    """Neighbours = the others sorted by cosine, self and near-duplicates (>= max_similarity) excluded."""
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.new("RGB", (4, 4)).save(tmp_path / f"x{i:02d}.png")
    vectors = {f"x{i:02d}.png": rng.normal(size=5).tolist() for i in range(12)}
    vectors["x07.png"] = vectors["x03.png"]  # an exact duplicate of image 3
    emb = TableEmbedder(vectors)
    index = NeighbourIndex(ImageCorpus.load(tmp_path), emb, tmp_path / "cache", max_similarity=0.999, batch_size=5)
    unit = np.array([vectors[f"x{i:02d}.png"] for i in range(12)])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    for anchor in range(12):
        sims = unit @ unit[anchor]
        expected = [j for j in np.argsort(-sims, kind="stable") if j != anchor and sims[j] < 0.999][:4]
        assert index.neighbours(anchor, 4) == expected
    assert 7 not in index.neighbours(3, 11 - 1) and 3 not in index.neighbours(7, 10)
    with pytest.raises(ValueError, match="neighbours below similarity"):
        index.neighbours(3, 11)  # 12 images - itself - its duplicate = 10
    assert emb.calls == 3  # 12 images in batches of 5, embedded once
    again = NeighbourIndex(ImageCorpus.load(tmp_path), emb, tmp_path / "cache")
    assert again.neighbours(0, 4) == index.neighbours(0, 4) and emb.calls == 3 and not again.computed


def test_pixel_embedder(tmp_path):
    base = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(base).save(tmp_path / "a.png")
    Image.fromarray(base).save(tmp_path / "a_copy.png")
    Image.fromarray(np.clip(base.astype(int) + 8, 0, 255).astype(np.uint8)).save(tmp_path / "a_bright.png")
    Image.fromarray(255 - base).save(tmp_path / "inverse.png")
    e = PixelEmbedder(size=4)
    v = e.embed([tmp_path / n for n in ("a.png", "a_copy.png", "a_bright.png", "inverse.png")])
    assert v.shape == (4, 48) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    assert np.array_equal(v[0], v[1])
    assert v[0] @ v[2] > v[0] @ v[3]


def test_encoder_embedder_with_a_tiny_clip(tmp_path, corpus_dir):
    """Any mmtrain encoder: a from-scratch tiny CLIP_SF, images encoded as candidates."""
    from mmtrain.toy.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(["a red image", "a blue image"] * 8, vocab_size=280).save_pretrained(tmp_path / "tok")
    spec = {"_target_": "mmtrain.models.clip_sf.ClipSFBackbone", "tokenizer": str(tmp_path / "tok"),
            "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2, "image_size": 32,
                     "patch_size": 8, "projection_dim": 16, "max_position_embeddings": 32}}
    corpus = ImageCorpus.load(corpus_dir)
    files = [corpus.path(p) for p in corpus.paths[:5]] + [corpus.path(corpus.paths[0])]
    first = EncoderEmbedder(model=spec, batch_size=4, device="cpu", seed=3).embed(files)
    second = EncoderEmbedder(model=spec, batch_size=2, device="cpu", seed=3).embed(files)
    assert first.shape == (6, 16) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(first, second, atol=1e-5)  # seeded weights, batch size irrelevant
    np.testing.assert_allclose(first[0], first[5], atol=1e-6)  # same image, same vector
    assert not np.allclose(first[0], first[1], atol=1e-3)
    # the checkpoint path: the same weights saved as an encoder state dict give the same vectors
    from hydra.utils import instantiate
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        encoder = instantiate(spec).build_encoder()
    torch.save(encoder.state_dict(), tmp_path / "enc.pt")
    from_ckpt = EncoderEmbedder(model=spec, ckpt=str(tmp_path / "enc.pt"), device="cpu", seed=99).embed(files)
    np.testing.assert_allclose(from_ckpt, first, atol=1e-5)
    assert EncoderEmbedder(model=spec, seed=3).describe() != EncoderEmbedder(model=spec, seed=4).describe()
