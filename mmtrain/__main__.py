"""``python -m mmtrain [+experiment=NAME] [overrides]``: a thin Hydra main over ``mmtrain.train.train``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import mmtrain.config  # noqa: F401  (registers the config schemas)


@hydra.main(config_path="pkg://mmtrain.conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from mmtrain.train import train  # heavy imports only once the config composed

    if cfg.pipeline:  # a staged recipe: each stage composed from its experiment, run in turn
        from mmtrain.pipeline import pipeline_overrides, run_pipeline
        stages = run_pipeline(list(cfg.pipeline), pipeline_overrides())
        summary = stages[-1]["results"]["summary"] if stages else {}
    else:
        summary = train(cfg)
    # A float return value lets Hydra sweepers optimise the headline metric.
    value = summary.get("headline")
    return float(value) if isinstance(value, (int, float)) else None


if __name__ == "__main__":
    main()
