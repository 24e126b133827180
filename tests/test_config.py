"""Every shipped config composes and instantiates; misspelled keys fail at composition."""

from __future__ import annotations

import inspect
import io
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError
from PIL import Image

import mmtrain.conf

EXPERIMENTS = sorted(p.stem for p in (Path(mmtrain.conf.__file__).parent / "experiment").glob("*.yaml"))
REQUIRED = {"clip_sf_mbeir": ["data.mbeir_root=/data/M-BEIR"],
            **{f"mm_embed_stage{i}": ["data.mbeir_root=/data/M-BEIR", "data.text_retrieval.convert.train=/d/t.jsonl"]
               for i in (1, 2, 3)},
            **{f"clip_sf_stage{i}": ["data.mbeir_root=/data/M-BEIR"] for i in (1, 2, 3)},
            "mme5": ["data.convert.root=/d/hardneg", "data.convert.image_root=/d/hardneg",
                     "data.parts.synthetic.convert.root=/d/syn", "data.parts.synthetic.convert.image_root=/d/syn",
                     "eval.benchmarks.mmeb.root=/d/mmeb", "eval.benchmarks.mmeb.image_dir=/d/mmeb",
                     "eval.benchmarks.xtd.root=/d/xtd", "eval.benchmarks.xtd.image_dir=/d/coco"]}


def compose_cfg(overrides: list[str], tmp_path: Path):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        return compose("config", overrides=[*overrides, f"paths.run_dir={tmp_path}/run",
                                            f"paths.cache_dir={tmp_path}/cache"])


def test_experiments_exist():
    assert {"toy_clip_sf", "toy_clip_sf_ddp_cpu", "clip_sf_mbeir"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_instantiates(name, tmp_path):
    cfg = compose_cfg([f"+experiment={name}", *REQUIRED.get(name, [])], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert cfg.name  # stage experiments share their pipeline's name on purpose
    backbone = instantiate(cfg.model)
    assert hasattr(backbone, "build_encoder") and hasattr(backbone, "build_processor")
    instantiate(cfg.loss)
    opt = instantiate(cfg.optim.optimizer)
    assert callable(opt)
    instantiate(cfg.data, backbone=backbone, seed=cfg.seed)
    for node in cfg.callbacks.values():
        instantiate(node)
    if OmegaConf.is_dict(cfg.strategy):
        instantiate(cfg.strategy)
    # The trainer may ask for GPUs this machine lacks: check its keys against Trainer's signature.
    accepted = set(inspect.signature(Trainer.__init__).parameters)
    assert set(cfg.trainer) - {"_target_"} <= accepted


def write_experiment(tmp_path: Path, body: str) -> str:
    (tmp_path / "extra" / "experiment").mkdir(parents=True)
    (tmp_path / "extra" / "experiment" / "probe.yaml").write_text("# @package _global_\n" + body)
    return f"hydra.searchpath=[file://{tmp_path / 'extra'}]"


@pytest.mark.parametrize("body", [
    "data:\n  batch_sise: 3\n",                 # misspelled key in a group
    "loss:\n  temprature: 0.1\n",
    "trainer:\n  max_step: 5\n",
    "model:\n  tiny:\n    hiden_size: 8\n",     # nested
    "sed: 3\n",                                 # top level
])
def test_misspelled_key_fails_at_composition(body, tmp_path):
    searchpath = write_experiment(tmp_path, body)
    with pytest.raises((ConfigCompositionException, ConfigKeyError)) as err:
        compose_cfg([searchpath, "+experiment=probe"], tmp_path)
    key = body.split(":")[0].strip() if body.startswith("sed") else body.split()[-2].rstrip(":")
    assert key in str(err.value) or key in str(err.value.__cause__)


def test_correct_key_in_experiment_is_applied(tmp_path):
    searchpath = write_experiment(tmp_path, "data:\n  batch_size: 3\n")
    assert compose_cfg([searchpath, "+experiment=probe"], tmp_path).data.batch_size == 3


def test_wrong_type_fails(tmp_path):
    searchpath = write_experiment(tmp_path, "data:\n  batch_size: many\n")
    with pytest.raises(ConfigCompositionException):
        compose_cfg([searchpath, "+experiment=probe"], tmp_path)


@pytest.mark.parametrize("family", ["mm_embed", "clip_sf"])
def test_stage_experiments_find_each_other(family, tmp_path):
    """Stage n reads stage n-1's outputs under <output_dir>/<name>/seed<seed>/<stage> (docs/stages.md)."""
    def stage(i):
        with initialize_config_module("mmtrain.conf", version_base="1.3"):
            cfg = compose("config", overrides=[f"+experiment={family}_stage{i}", "data.mbeir_root=/d",
                                               f"paths.output_dir={tmp_path}"])
        return OmegaConf.to_container(cfg.stage, resolve=True), cfg.data.negatives_table
    root = tmp_path / family / ("seed2023" if family == "clip_sf" else "seed0")  # UniIR's seed
    s1, t1 = stage(1)
    s2, t2 = stage(2)
    s3, t3 = stage(3)
    assert (s1["name"], s1["init_from"], t1) == ("rand", None, None)
    assert (s2["name"], s2["init_from"], t2) == ("hard", None, str(root / "rand" / "mining" / "table"))
    assert s3 == {"name": "continual", "init_from": str(root / "hard" / "checkpoints" / "last.ckpt")}
    assert t3 == str(root / "hard" / "mining" / "table")


# ---------------------------------------------------------------- every model config builds its encoder

MODELS = sorted(p.stem for p in (Path(mmtrain.conf.__file__).parent / "model").glob("*.yaml"))
TINY_MODELS = ["clip_sf_tiny", "llava_next_tiny", "mllama_tiny", "qwen2_vl_tiny"]


def compose_model(name: str, tmp_path: Path):
    cfg = compose_cfg([f"model={name}"], tmp_path)
    OmegaConf.resolve(cfg)
    return cfg


def test_model_configs_are_all_covered():
    """A new conf/model file must be added to one of the two lists below (tiny or hub)."""
    assert sorted(TINY_MODELS + list(HUB_MODELS)) == MODELS
    assert {"qwen2_vl_2b", "qwen2_vl_tiny"} <= set(MODELS)  # no experiment uses these two today


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_config_builds_its_encoder_and_encodes(name, tmp_path):
    """From-scratch models: the full build (weights, LoRA, pooling, processor) and one forward."""
    from mmtrain.data.schema import Item
    from mmtrain.toy.tokenizer import train_bpe_tokenizer

    cfg = compose_model(name, tmp_path)
    words = ["a red square on a blue field", "find the image that matches", "a green circle"] * 8
    train_bpe_tokenizer(words, vocab_size=300).save_pretrained(cfg.model.tokenizer)
    backbone = instantiate(cfg.model)
    encoder, processor = backbone.build_encoder(), backbone.build_processor()
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) > 0
    jpeg = io.BytesIO()
    Image.new("RGB", (40, 32), (200, 30, 30)).save(jpeg, format="JPEG")
    items = [Item(text="a red square", image=jpeg.getvalue(), modality="image,text", instruction="find the image"),
             Item(text="a green circle", image=None, modality="text", instruction="find the image")]
    with torch.no_grad():
        emb = encoder.encode_queries(processor(items))
    assert emb.shape[0] == 2 and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-4)


# The published architectures of the hub checkpoints, written from their model cards / config.json
# (nothing can be downloaded here). Each builds on the meta device (no memory, no weights); the
# parameter count (published size less the LM head AutoModel leaves out, +-2 %) shows the table
# describes the real model. What is checked:
# the spec asks for the right hub id, the right model class is built, and the spec's own wrapping
# (LoRA, pooling, bidirectional attention, LLM swap hooks) applies to the full-size architecture.
# Not checked: the hub's actual config.json, tokenizer and processor files, and the weights.
def _clip_large():
    from transformers import CLIPConfig
    return CLIPConfig(
        text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         max_position_embeddings=77, vocab_size=49408, projection_dim=768),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768),
        projection_dim=768)


def _llava_mistral_7b():
    from transformers import LlavaNextConfig
    return LlavaNextConfig(
        text_config=dict(model_type="mistral", vocab_size=32064, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=32768, sliding_window=None),
        vision_config=dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14,
                           projection_dim=768),
        image_token_index=32000, tie_word_embeddings=False,
        image_grid_pinpoints=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])


def _llama_vision_11b():
    from transformers import MllamaConfig
    return MllamaConfig(
        text_config=dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=40,
                         num_attention_heads=32, num_key_value_heads=8,
                         cross_attention_layers=[3, 8, 13, 18, 23, 28, 33, 38]),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_global_layers=8,
                           attention_heads=16, image_size=560, patch_size=14, max_num_tiles=4,
                           vision_output_dim=7680, intermediate_layers_indices=[3, 7, 15, 23, 30]),
        image_token_index=128256)


def _qwen2_vl_2b():
    from transformers import Qwen2VLConfig
    return Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                          "rope_theta": 1000000.0}),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, tie_word_embeddings=True)


LLAVA_7B = ("llava-hf/llava-v1.6-mistral-7b-hf", _llava_mistral_7b, "LlavaNextModel", 7.57e9 - 32064 * 4096)
HUB_MODELS = {  # config file -> (hub id, architecture, model class, published parameter count)
    "clip_sf_large": ("openai/clip-vit-large-patch14", _clip_large, "CLIPModel", 0.428e9),
    "mm_embed_llava_e": LLAVA_7B, "mm_embed_llava_p": LLAVA_7B, "mm_embed_nv_embed": LLAVA_7B,
    "mme5_llama_vision": ("meta-llama/Llama-3.2-11B-Vision", _llama_vision_11b, "MllamaModel",
                          10.67e9 - 128256 * 4096),
    "qwen2_vl_2b": ("Qwen/Qwen2-VL-2B-Instruct", _qwen2_vl_2b, "Qwen2VLModel", 2.21e9),  # tied LM head
}


@pytest.mark.parametrize("name", sorted(HUB_MODELS))
def test_hub_model_config_builds_its_encoder_on_the_meta_device(name, tmp_path, monkeypatch):
    import transformers

    import mmtrain.models.clip_sf as clip_sf
    import mmtrain.models.mllm.backbone as mllm

    hub_id, architecture, model_class, published = HUB_MODELS[name]
    asked, built, swapped = [], [], []

    def from_pretrained(model_id, *args, **kwargs):
        asked.append(model_id)
        model = transformers.AutoModel.from_config(architecture())
        built.append((model, sum(p.numel() for p in model.parameters())))  # before LoRA joins
        return model

    monkeypatch.setattr(mllm.AutoModel, "from_pretrained", from_pretrained)
    monkeypatch.setattr(clip_sf.CLIPModel, "from_pretrained", from_pretrained)
    monkeypatch.setattr(mllm, "load_into", lambda target, source, prefix="", revision=None: swapped.append(
        (type(target).__name__, source, prefix)) or 0)

    cfg = compose_model(name, tmp_path)
    backbone = instantiate(cfg.model)
    with torch.device("meta"):
        encoder = backbone.build_encoder()
    assert asked == [hub_id]
    [(model, size)] = built
    assert type(model).__name__ == model_class
    assert abs(size / published - 1) < 0.02, f"{size / 1e9:.3f}B parameters, published {published / 1e9:.3f}B"
    assert hasattr(encoder, "encode_queries") and hasattr(encoder, "encode_candidates")
    spec = cfg.model
    if spec.get("lora") is not None:  # LoRA on the language model; the rest frozen except the projector
        trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
        assert any("lora_" in n for n in trainable)
        assert not any("vision_tower" in n or "visual.blocks" in n for n in trainable)
    if spec.get("llm_swap") is not None:  # NV-Embed: its LLM and latent-attention weights are loaded in
        assert [(s, p) for _, s, p in swapped] == [(spec.llm_swap.source, spec.llm_swap.prefix),
                                                   (spec.llm_swap.source, spec.llm_swap.pooling_prefix)]
    if spec.get("pooling") is not None and spec.pooling.kind == "latent_attention":
        assert any(p.requires_grad for p in encoder.pooling.parameters())


def test_toy_stages_ask_the_run_layout_and_explicit_paths_still_win(tmp_path):
    def stage3(*extra):
        with initialize_config_module("mmtrain.conf", version_base="1.3"):
            return compose("config", overrides=["+experiment=toy_clip_sf_stage3", f"paths.output_dir={tmp_path}",
                                                f"paths.run_dir={tmp_path}/here", *extra])
    root = tmp_path / "toy_clip_sf" / "seed0"
    cfg = stage3()
    assert cfg.stage.init_from == str(root / "hard" / "checkpoints" / "last.ckpt")
    assert list(cfg.data.negatives_table) == [str(root / "hard" / "mining" / "table"),
                                              str(root / "hard" / "mining_text" / "table")]
    assert cfg.callbacks.checkpoint.dirpath == str(tmp_path / "here" / "checkpoints")
    # The printed config names the outputs rather than repeating their paths.
    assert "${stage_output:hard,checkpoint}" in OmegaConf.to_yaml(cfg)
    cfg = stage3("stage.init_from=/elsewhere/model.ckpt", "data.negatives_table=[/t/one]")
    assert cfg.stage.init_from == "/elsewhere/model.ckpt" and list(cfg.data.negatives_table) == ["/t/one"]
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=toy_clip_sf_stage1", f"paths.run_dir={tmp_path}/r1"])
    assert cfg.callbacks.mining.work_dir == str(tmp_path / "r1" / "mining")
