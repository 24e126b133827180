"""mmtrain: train universal multimodal retrieval embedders (MM-Embed, mmE5, CLIP score fusion)."""

__version__ = "0.1.0"


def load(path, device="cpu", merged=False):
    """Load an exported encoder: ``mmtrain.load(path).encode(inputs, instruction=...)`` (mmtrain/export.py).
    Imported lazily so ``import mmtrain`` (config composition) stays light."""
    from mmtrain.export import load as _load

    return _load(path, device=device, merged=merged)
