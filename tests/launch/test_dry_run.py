"""dry_run=true: composes and checks without training, and says clearly what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from launch_helpers import run_cli, small
from mmtrain.pipeline import dry_run_pipeline
from mmtrain.preflight import PreflightError
from mmtrain.train import train


def dry(tmp_path: Path, cache: Path | None, *extra: str) -> tuple[dict, list[str]]:
    """A dry run on the small toy world in ``cache`` (or, without one, on exactly ``extra``)."""
    base = small(cache) if cache is not None else [f"paths.cache_dir={tmp_path}/cache"]
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*base, f"paths.run_dir={tmp_path}/run", "dry_run=true", *extra])
    report = train(cfg)
    assert report["status"] == "dry_run"
    assert not (tmp_path / "run" / "checkpoints").exists(), "a dry run never trains"
    return report, [f"[{p['level']}] {p['check']}: {p['message']}" for p in report["problems"]]


def test_a_good_config_passes(tmp_path, toy_cache, capsys):
    report, problems = dry(tmp_path, toy_cache, "data.batch_size=16", "trainer.devices=2",
                           "trainer.accumulate_grad_batches=2", "global_batch_size=64")
    assert report["ok"], problems
    out = capsys.readouterr().out
    assert "global batch: 16 per device x 2 ranks x 2 accumulation = 64 (declared 64)" in out
    assert "dry run: OK, nothing trained" in out


def test_wrong_global_batch_arithmetic(tmp_path, toy_cache):
    report, problems = dry(tmp_path, toy_cache, "data.batch_size=16", "trainer.devices=2",
                           "trainer.accumulate_grad_batches=2", "global_batch_size=512")
    assert not report["ok"]
    [msg] = [p for p in problems if "batch:" in p]
    assert msg.startswith("[error]")
    assert ("global_batch_size=512 is declared, but data.batch_size (16) x trainer.devices (2) x "
            "trainer.num_nodes (1) x trainer.accumulate_grad_batches (2) = 64") in msg
    assert "data.batch_size=128 or trainer.accumulate_grad_batches=16" in msg


def test_fewer_shards_than_workers_times_ranks(tmp_path, toy_cache):
    # The small toy world has 2 shards per train source; 2 ranks x 2 workers = 4 readers.
    report, problems = dry(tmp_path, toy_cache, "trainer.devices=2", "data.num_workers=2")
    [msg] = [p for p in problems if "shards:" in p]
    assert "fewer shards than 2 worker(s) x 2 rank(s) = 4 readers" in msg
    assert "data.min_shards_per_source>=4" in msg
    assert not report["ok"]
    report, problems = dry(tmp_path, toy_cache, "trainer.devices=2", "data.num_workers=1")
    assert report["ok"], problems


def test_missing_negatives_table_for_a_hard_negative_stage(tmp_path, toy_cache):
    report, problems = dry(tmp_path, toy_cache, "+experiment=toy_clip_sf_stage2", f"paths.output_dir={tmp_path}/out")
    [msg] = [p for p in problems if "negatives:" in p]
    assert f"data.negatives_table {tmp_path}/out/toy_clip_sf/seed0/rand/mining/table does not exist" in msg
    assert "stage hard reads the hard negatives mined at the end of the previous stage" in msg


def test_a_pipeline_dry_run_knows_earlier_stages_write_the_table(tmp_path, toy_cache, capsys):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        report = dry_run_pipeline(["toy_clip_sf_stage1", "toy_clip_sf_stage2", "toy_clip_sf_stage3"],
                                  [*small(toy_cache), f"paths.output_dir={tmp_path}/out", "dry_run=true"])
    assert report["ok"], report["problems"]
    assert capsys.readouterr().out.count("dry run: OK") == 3


@pytest.mark.slow
def test_no_experiment_means_the_staged_toy_recipe(tmp_path, toy_cache):
    # `python -m mmtrain` runs the three stages (conf/config.yaml default_pipeline); here only their dry runs.
    proc = run_cli([*small(toy_cache), f"paths.output_dir={tmp_path}/out", "dry_run=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    stages = [line for line in proc.stdout.splitlines() if line.startswith("=== stage")]
    assert stages == ["=== stage rand (toy_clip_sf_stage1)", "=== stage hard (toy_clip_sf_stage2)",
                      "=== stage continual (toy_clip_sf_stage3)"]
    assert proc.stdout.count("dry run: OK") == 3


def test_missing_data_path(tmp_path):
    report, problems = dry(tmp_path, None, "data=mbeir", f"data.mbeir_root={tmp_path}/no/M-BEIR",
                           "model.tokenizer=null")
    [msg] = [p for p in problems if "paths:" in p]
    assert msg.startswith(f"[error] paths: data.mbeir_root={tmp_path}/no/M-BEIR does not exist")
    # Not set at all (`???` in conf/data/mbeir.yaml): named, not a stack trace.
    report, problems = dry(tmp_path, None, "data=mbeir", "model.tokenizer=null")
    assert any("data.mbeir_root" in p and "Missing mandatory value" in p for p in problems), problems


def test_a_normal_launch_runs_the_checks_first(tmp_path, toy_cache):
    with initialize_config_module("mmtrain.conf", version_base="1.3"):
        cfg = compose("config", overrides=[*small(toy_cache), f"paths.run_dir={tmp_path}/run", "global_batch_size=7"])
    with pytest.raises(PreflightError, match="global_batch_size=7 is declared"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_exit_status(tmp_path, toy_cache):
    bad = run_cli(["+experiment=toy_clip_sf", f"hydra.run.dir={tmp_path}/run", *small(toy_cache), "dry_run=true",
                   "global_batch_size=100"],
                  cwd=tmp_path)
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert "[error] batch: global_batch_size=100 is declared" in bad.stdout
    assert "dry run: 1 problem(s), nothing trained" in bad.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()
