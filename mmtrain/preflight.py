"""Checks that need no GPU and no training: run before every launch, and alone with ``dry_run=true``.

``python -m mmtrain +experiment=X ... dry_run=true`` composes the config, resolves it, builds the
cheap pieces (loss, optimizer, callbacks, strategy, data module, model spec), checks the batch
arithmetic, shards vs readers, paths, disk space and (for a hard-negative stage) the negatives
table, prints the layout and every problem, and exits (status 1 on any problem) without training.
A normal launch runs the same checks first: errors stop it, warnings are logged.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmtrain.checkpoint import checkpoint_problem
from mmtrain.run_dir import RUN_OUTPUTS

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Problem:
    level: str      # error (the run would fail or train the wrong thing) | warning (slow or wasteful)
    check: str      # config | batch | shards | paths | disk | negatives
    message: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.check}: {self.message}"


class PreflightError(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("preflight found problems:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Layout:
    devices: int
    num_nodes: int
    per_device_batch: int
    accumulation: int
    note: str = ""

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.world_size * self.accumulation


def _devices(trainer: Any) -> tuple[int, str]:
    """trainer.devices as a count, and a note when it had to be assumed."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > 0:
        return devices, ""
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices), ""
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices), ""
    if trainer.get("accelerator") == "cpu":
        return 1, "trainer.devices=auto on CPU: 1 process"
    if os.environ.get("SLURM_NTASKS_PER_NODE", "").isdigit():
        return int(os.environ["SLURM_NTASKS_PER_NODE"]), "trainer.devices=auto: SLURM_NTASKS_PER_NODE"
    import torch
    n = torch.cuda.device_count()
    return max(n, 1), f"trainer.devices={devices}: assumed {max(n, 1)} (the GPUs visible here)"


def layout(cfg: DictConfig) -> Layout:
    devices, note = _devices(cfg.trainer)
    return Layout(devices, int(cfg.trainer.get("num_nodes", 1)), int(cfg.data.batch_size),
                  int(cfg.trainer.get("accumulate_grad_batches", 1)), note)


def check_batch(cfg: DictConfig) -> list[Problem]:
    lay = layout(cfg)
    if lay.per_device_batch < 1 or lay.accumulation < 1:
        return [Problem(ERROR, "batch", f"data.batch_size={lay.per_device_batch} and trainer.accumulate_grad_batches="
                                        f"{lay.accumulation} must be >= 1")]
    declared = cfg.get("global_batch_size")
    if declared is None or declared == lay.global_batch:
        return []
    formula = (f"data.batch_size ({lay.per_device_batch}) x trainer.devices ({lay.devices}) x trainer.num_nodes "
               f"({lay.num_nodes}) x trainer.accumulate_grad_batches ({lay.accumulation}) = {lay.global_batch}")
    fixes = []
    if declared % (lay.world_size * lay.accumulation) == 0:
        fixes.append(f"data.batch_size={declared // (lay.world_size * lay.accumulation)}")
    if declared % (lay.world_size * lay.per_device_batch) == 0:
        fixes.append(f"trainer.accumulate_grad_batches={declared // (lay.world_size * lay.per_device_batch)}")
    hint = f"; e.g. {' or '.join(fixes)}" if fixes else "; no integer per-device batch fits this layout"
    return [Problem(ERROR, "batch", f"global_batch_size={declared} is declared, but {formula}{hint}")]


def check_shards(cfg: DictConfig) -> list[Problem]:
    """WebDataset splits shards over ranks x workers; with fewer shards every reader reads every shard
    (mmtrain/data/stream.py) and loading stalls at scale (open_clip #480, performance.md §6)."""
    from mmtrain.data.shards import MANIFEST, read_manifest

    lay = layout(cfg)
    workers = max(1, int(cfg.data.get("num_workers", 0)))
    readers = workers * lay.world_size
    how = f"{workers} worker(s) x {lay.world_size} rank(s) = {readers} readers"
    shard_dir = Path(cfg.data.shard_dir)
    if (shard_dir / MANIFEST).is_file():
        sources = [s for s in read_manifest(shard_dir)["sources"].values() if s["split"] == "train" and s["count"] > 0]
        few = sorted((len(s["shards"]), s["name"]) for s in sources if len(s["shards"]) < readers)
        if not few:
            return []
        listed = ", ".join(f"{name} ({n})" for n, name in few[:8]) + (" ..." if len(few) > 8 else "")
        return [Problem(WARNING, "shards", f"{len(few)} train source(s) have fewer shards than {how}: {listed}. "
                        f"Rebuild the shards with data.min_shards_per_source>={readers} (or lower data.num_workers)")]
    min_shards = int(cfg.data.get("min_shards_per_source", 1))
    if min_shards < readers:
        return [Problem(WARNING, "shards", f"shards not built yet; data.min_shards_per_source={min_shards} < {how}: "
                        f"sources under {readers * int(cfg.data.samples_per_shard)} samples would get fewer shards "
                        f"than readers. Set data.min_shards_per_source>={readers}")]
    return []


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _looks_local(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("/", "./", "../", "~"))


def check_paths(cfg: DictConfig, will_exist: Iterable[str] = ()) -> list[Problem]:
    problems: list[Problem] = []
    will_exist = {str(Path(p).absolute()) for p in will_exist}
    data = cfg.data
    toy = data.get("toy_world") is not None
    if not toy and data.get("convert") is None and not Path(data.mbeir_root).is_dir():
        level = WARNING if (Path(data.shard_dir) / "manifest.json").is_file() else ERROR
        problems.append(Problem(level, "paths", f"data.mbeir_root={data.mbeir_root} does not exist (the M-BEIR tree: "
                                                "query/, cand_pool/, instructions/, qrels/, mbeir_images/)"))
    for other in (data.get("mix") or {}):
        if not Path(str(other), "manifest.json").is_file():
            problems.append(Problem(ERROR, "paths", f"data.mix names {other}, which has no manifest.json"))
    model = cfg.model
    generated = str(Path(data.toy_world.dir).absolute()) if toy else None
    for key in ("pretrained", "tokenizer"):
        value = model.get(key)
        if _looks_local(value) and not Path(value).expanduser().exists():
            if generated and str(Path(value).absolute()).startswith(generated):
                continue  # generated with the toy world on the first run
            problems.append(Problem(ERROR, "paths", f"model.{key}={value} does not exist"))
    init_from = cfg.get("stage", {}).get("init_from") if cfg.get("stage") else None
    problem = init_from and str(Path(init_from).absolute()) not in will_exist and \
        checkpoint_problem(init_from, "stage.init_from")
    if problem:
        problems.append(Problem(ERROR, "paths", problem))
    for key in ("paths.run_dir", "paths.cache_dir"):
        where = _nearest_existing(Path(OmegaConf.select(cfg, key)))
        if not os.access(where, os.W_OK):
            problems.append(Problem(ERROR, "paths", f"{key}: cannot write under {where}"))
    return problems


def check_disk(cfg: DictConfig) -> list[Problem]:
    need = float(cfg.run.min_free_disk_gb)
    problems = []
    for key in ("paths.run_dir", "paths.cache_dir"):
        where = _nearest_existing(Path(OmegaConf.select(cfg, key)))
        free = shutil.disk_usage(where).free / 2**30
        if free < need:
            problems.append(Problem(ERROR, "disk", f"{key}: only {free:.1f} GiB free on {where}, "
                                                   f"run.min_free_disk_gb={need:g}"))
    return problems


def check_negatives(cfg: DictConfig, will_exist: Iterable[str] = ()) -> list[Problem]:
    """A hard-negative stage reads the table(s) the previous stage mined (conf/stage/*.yaml)."""
    data = cfg.data
    tables, k = data.get("negatives_table"), int(data.get("num_negatives", 0))
    tables = [tables] if isinstance(tables, str) else list(tables or [])
    stage = cfg.stage.name if cfg.get("stage") else "single"
    if k > 0 and not tables and stage in ("hard", "continual"):
        return [Problem(ERROR, "negatives", f"stage {stage} trains with data.num_negatives={k} but "
                                            "data.negatives_table is not set")]
    if tables and k == 0:
        return [Problem(WARNING, "negatives", f"data.negatives_table={tables} is set but data.num_negatives=0: unused")]
    coming = {str(Path(p).absolute()) for p in will_exist}
    problems = []
    for table in tables:
        if str(Path(table).absolute()) in coming:
            continue
        if not Path(table).is_dir():
            problems.append(Problem(ERROR, "negatives", f"data.negatives_table {table} does not exist: stage {stage} "
                                    "reads the hard negatives mined at the end of the previous stage; run that stage "
                                    f"first (it writes <its run_dir>/{RUN_OUTPUTS['negatives']})"))
        elif not (Path(table) / "meta.json").is_file():
            problems.append(Problem(ERROR, "negatives", f"data.negatives_table {table} has no meta.json: not a "
                                    "finished table"))
    return problems


def check_build(cfg: DictConfig) -> list[Problem]:
    """Build what is cheap to build, so a wrong argument fails here rather than on the cluster."""
    from hydra.utils import instantiate
    from lightning.pytorch import Trainer

    problems = []
    pieces = {"loss": lambda: instantiate(cfg.loss), "optim.optimizer": lambda: instantiate(cfg.optim.optimizer),
              "strategy": lambda: instantiate(cfg.strategy) if OmegaConf.is_dict(cfg.strategy) else None,
              "data": lambda: instantiate(cfg.data, backbone=instantiate(cfg.model), seed=cfg.seed),
              "module": lambda: instantiate(  # as mmtrain.train.build does; weights are built later
                  cfg.get("module") or {"_target_": "mmtrain.lightning.module.RetrievalModule"},
                  backbone=instantiate(cfg.model), loss=instantiate(cfg.loss),
                  optimizer=instantiate(cfg.optim.optimizer), lr_schedule=cfg.optim.lr_schedule,
                  warmup_ratio=cfg.optim.warmup_ratio, init_from=cfg.stage.init_from)}
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is not None:
            pieces[f"callbacks.{name}"] = lambda node=node: instantiate(node)
    for name, build in pieces.items():
        try:
            build()
        except Exception as e:  # noqa: BLE001 (reported, not raised: the dry run lists every problem)
            problems.append(Problem(ERROR, "config", f"{name} cannot be built: {type(e).__name__}: {e}"))
    unknown = set(cfg.trainer) - {"_target_"} - set(inspect.signature(Trainer.__init__).parameters)
    if unknown:
        problems.append(Problem(ERROR, "config", f"trainer keys Trainer does not take: {sorted(unknown)}"))
    return problems


def run_checks(cfg: DictConfig, *, build: bool = False, will_exist: Iterable[str] = ()) -> list[Problem]:
    will_exist = list(will_exist)
    checks = [("batch", lambda: check_batch(cfg)), ("shards", lambda: check_shards(cfg)),
              ("paths", lambda: check_paths(cfg, will_exist)), ("disk", lambda: check_disk(cfg)),
              ("negatives", lambda: check_negatives(cfg, will_exist))]
    if build:
        checks.append(("config", lambda: check_build(cfg)))
    problems = []
    for name, check in checks:
        try:
            problems += check()
        except Exception as e:  # noqa: BLE001 (a check that cannot run is itself a finding)
            problems.append(Problem(ERROR, name, f"check could not run: {type(e).__name__}: {e}"))
    return problems


def preflight(cfg: DictConfig) -> list[Problem]:
    """Before a launch: raise on errors, log warnings, return the warnings."""
    problems = run_checks(cfg)
    errors = [p for p in problems if p.level == ERROR]
    if errors:
        raise PreflightError(errors)
    for p in problems:
        log.warning("%s", p)
    return problems


def _resolved(cfg: DictConfig) -> tuple[DictConfig, list[Problem]]:
    """A resolved copy; a missing mandatory value (``???``) or a broken interpolation is a problem."""
    copy = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    try:
        OmegaConf.resolve(copy)
        OmegaConf.to_container(copy, throw_on_missing=True)
    except Exception as e:  # noqa: BLE001
        key = getattr(e, "full_key", None)
        return cfg, [Problem(ERROR, "config", f"{key + ': ' if key else ''}{type(e).__name__}: {e}".splitlines()[0])]
    return copy, []


def dry_run(cfg: DictConfig, will_exist: Iterable[str] = (), out: Any = print) -> dict[str, Any]:
    """Check one run and print what would run; never trains."""
    resolved, problems = _resolved(cfg)
    if not problems:
        problems = run_checks(resolved, build=True, will_exist=will_exist)
        lay = layout(resolved)
        out(f"dry run: {resolved.name} -> {resolved.paths.run_dir}\n"
            f"  layout: {lay.num_nodes} node(s) x {lay.devices} device(s) = {lay.world_size} rank(s)"
            + (f" ({lay.note})" if lay.note else "") +
            f"\n  global batch: {lay.per_device_batch} per device x {lay.world_size} ranks x "
            f"{lay.accumulation} accumulation = {lay.global_batch}"
            + (f" (declared {resolved.global_batch_size})" if resolved.get("global_batch_size") else "") +
            f"\n  steps: {resolved.trainer.max_steps}, stage: {resolved.stage.name if resolved.get('stage') else '-'}")
    for p in problems:
        out(f"  {p}")
    out("dry run: OK, nothing trained" if not problems else f"dry run: {len(problems)} problem(s), nothing trained")
    return {"status": "dry_run", "ok": not problems, "problems": [asdict(p) for p in problems]}

