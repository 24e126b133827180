"""``python -m mmtrain.synth out_dir=DIR num_samples=N corpus.images=DIR_OR_LIST generator.model=NAME
[generator.base_url=http://host:8000/v1] [overrides]`` (conf/synth.yaml; docs/synthesis.md).
The same command again resumes a killed run."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import mmtrain.config  # noqa: F401  (registers the config schemas)


@hydra.main(config_path="pkg://mmtrain.conf", config_name="synth", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from mmtrain.synth.pipeline import synthesize

    # One INFO line per HTTP request would bury the progress bar of a 560K-sample run.
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    synthesize(cfg)


if __name__ == "__main__":
    main()
