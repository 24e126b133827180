"""mmtrain: train universal multimodal retrieval embedders (MM-Embed, mmE5, CLIP score fusion)."""

__version__ = "0.1.0"
