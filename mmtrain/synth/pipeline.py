"""The synthesis run: configure -> one MLLM pass per sample -> validate / retry / reject -> parts ->
manifest + canonical shards. ``python -m mmtrain.synth`` (``__main__.py``) calls :func:`synthesize`.

Per sample (:class:`Synthesizer`): the images are read and re-encoded (an unreadable image rejects the
sample at once, reason ``bad_image``), then up to ``validation.max_attempts`` requests. A timeout, an API
error, an answer that is not JSON or breaks the schema each cost one attempt (timeouts and API errors
wait ``backoff_seconds * 2**k`` first); an HTTP 400 rejects at once. The record keeps every failed
attempt's reason and message, and the last raw answer's first ``excerpt_chars`` characters.

Requests run on ``generator.max_concurrency`` threads; at most twice that many samples are in flight,
so a 560K-sample run holds a few dozen configurations in memory, not all of them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mmtrain.data.convert.core import ImageRef, encode_image
from mmtrain.synth.configure import Configurator, SampleConfig
from mmtrain.synth.corpus import ImageCorpus
from mmtrain.synth.generators import (ChatRequest, GenerationTimeout, ImagePart, SampleGenerationError,
                                      TransientGenerationError)
from mmtrain.synth.languages import language_weights
from mmtrain.synth.output import finish
from mmtrain.synth.prompts import IMAGE_LABEL, prompt_version, render
from mmtrain.synth.response import InvalidResponse, validate
from mmtrain.synth.retrieval import NeighbourIndex
from mmtrain.synth.store import PartStore, RunLock

log = logging.getLogger(__name__)


def request_seed(seed: int, index: int, attempt: int) -> int:
    """A 31-bit sampling seed per (run seed, sample, attempt): a retry samples differently."""
    return int(np.random.SeedSequence([seed, index, attempt]).generate_state(1)[0] >> 1)


class Synthesizer:
    """One sample's whole life: images, attempts, validation -> an accepted or rejected record."""

    def __init__(self, generator: Any, corpus: ImageCorpus, seed: int, max_attempts: int = 3,
                 backoff_seconds: float = 2.0, excerpt_chars: int = 500):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.generator, self.corpus, self.seed = generator, corpus, seed
        self.max_attempts, self.backoff_seconds, self.excerpt_chars = max_attempts, backoff_seconds, excerpt_chars

    def images(self, config: SampleConfig) -> list[ImagePart]:
        side = getattr(self.generator, "image_short_side", 512)
        return [ImagePart(role, encode_image(ImageRef(path=str(self.corpus.path(path))), side)[0])
                for role, path in config.images()]

    def request(self, config: SampleConfig, images: list[ImagePart], attempt: int) -> ChatRequest:
        parts: list[str | ImagePart] = []
        for image in images:
            parts += [IMAGE_LABEL.format(role=image.role), image]
        parts.append(render(config))
        return ChatRequest(tuple(parts), request_seed(self.seed, config.index, attempt),
                           f"mmtrain-synth-s{self.seed}-i{config.index}-a{attempt}")

    def run(self, config: SampleConfig) -> dict[str, Any]:
        base = {"index": config.index, "config": config.to_json()}
        try:
            images = self.images(config)
        except Exception as e:  # PIL raises many types for a bad file
            failure = {"attempt": 0, "reason": "bad_image", "message": f"{type(e).__name__}: {e}"}
            return self._rejected(base, 0, [failure], None)
        failures: list[dict[str, Any]] = []
        last_text = None
        for attempt in range(1, self.max_attempts + 1):
            if failures and failures[-1]["reason"] in (GenerationTimeout.reason, TransientGenerationError.reason):
                time.sleep(self.backoff_seconds * 2 ** (len(failures) - 1))
            try:
                text = self.generator.generate(self.request(config, images, attempt))
            except (GenerationTimeout, TransientGenerationError) as e:
                failures.append({"attempt": attempt, "reason": e.reason, "message": str(e)})
                continue
            except SampleGenerationError as e:
                failures.append({"attempt": attempt, "reason": e.reason, "message": str(e)})
                return self._rejected(base, attempt, failures, None)
            last_text = text
            try:
                s = validate(text, config)
            except InvalidResponse as e:
                failures.append({"attempt": attempt, "reason": e.reason, "message": str(e),
                                 "excerpt": text[:self.excerpt_chars]})
                continue
            return {**base, "status": "accepted", "attempts": attempt, "failures": failures,
                    "sample": {"instruction": s.instruction, "query": s.query, "positive": s.positive,
                               "negative": s.negative},
                    "ignored_fields": s.ignored_fields, "response": s.response}
        return self._rejected(base, self.max_attempts, failures, last_text)

    def unconfigurable(self, index: int, error: Exception) -> dict[str, Any]:
        failure = {"attempt": 0, "reason": "configuration", "message": str(error)}
        return self._rejected({"index": index, "config": {"index": index}}, 0, [failure], None)

    def _rejected(self, base: dict, attempts: int, failures: list[dict], last_text: str | None) -> dict[str, Any]:
        last = failures[-1]
        return {**base, "status": "rejected", "attempts": attempts, "failures": failures,
                "reason": last["reason"], "message": last["message"],
                "last_response_excerpt": None if last_text is None else last_text[:self.excerpt_chars]}


def identity(cfg: DictConfig, corpus: ImageCorpus, embedder: Any, generator: Any) -> dict[str, Any]:
    """What the samples depend on: a resume with another value is refused (store.py)."""
    r = cfg.retriever
    return {"seed": int(cfg.seed), "corpus": corpus.fingerprint(), "corpus_size": len(corpus),
            "embedder": embedder.describe(),
            "retrieval": {"positive_rank": r.positive_rank, "hard_negative_rank": r.hard_negative_rank,
                          "max_similarity": r.max_similarity},
            "sampling": OmegaConf.to_container(cfg.sampling, resolve=True), "prompt": prompt_version(),
            "generator_model": generator.describe().get("model")}


def _run_loop(todo: list[int], configurator: Configurator, synth: Synthesizer, store: PartStore,
              concurrency: int, bar: tqdm, abort_after: int) -> None:
    """Generate ``todo`` on ``concurrency`` threads, recording results as they finish."""
    pending: set[Future] = set()
    queue = deque(todo)
    streak: deque[str] = deque(maxlen=max(1, abort_after))
    counts = {"accepted": 0, "rejected": 0}
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="synth")
    clean = False
    try:
        while queue or pending:
            while queue and len(pending) < 2 * concurrency:
                index = queue.popleft()
                try:
                    config = configurator.configure(index)
                except ValueError as e:  # e.g. an anchor image without enough distinct neighbours
                    pending.add(pool.submit(synth.unconfigurable, index, e))
                    continue
                pending.add(pool.submit(synth.run, config))
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                record = future.result()  # a fatal generator error propagates here
                store.add(record)
                counts[record["status"]] += 1
                bar.update(1)
                bar.set_postfix(counts, refresh=False)
                streak.append(record["status"] == "rejected" and record["reason"])
                if abort_after and len(streak) == abort_after and all(streak):
                    raise RuntimeError(f"{abort_after} samples in a row were rejected (reasons: "
                                       f"{sorted(set(streak))}); stopping: check the endpoint, model and prompt. "
                                       f"Finished samples are saved; the same command resumes.")
        clean = True
    finally:
        store.flush()  # what has finished is kept, whatever stopped the loop
        pool.shutdown(wait=clean, cancel_futures=True)


def synthesize(cfg: DictConfig, *, generator: Any = None, embedder: Any = None) -> dict[str, Any]:
    """Run (or resume) the synthesis ``cfg`` describes (conf/synth.yaml); returns the manifest.
    ``generator`` / ``embedder`` replace the configured ones (tests, notebooks)."""
    from hydra.utils import instantiate

    out = Path(cfg.out_dir)
    with RunLock(out):
        corpus = ImageCorpus.load(cfg.corpus.images)
        embedder = embedder if embedder is not None else instantiate(cfg.retriever.embedder)
        generator = generator if generator is not None else instantiate(cfg.generator)
        neighbours = NeighbourIndex(corpus, embedder, out / "retrieval", cfg.retriever.max_similarity,
                                    cfg.retriever.batch_size)
        lang = cfg.sampling.languages
        weights = language_weights(lang.english_share, lang.high_resource_share, list(lang.high_resource),
                                   list(lang.languages) if lang.languages else None)
        configurator = Configurator(cfg.seed, OmegaConf.to_container(cfg.sampling.task_modality), weights, neighbours,
                                    positive_rank=cfg.retriever.positive_rank,
                                    hard_negative_rank=cfg.retriever.hard_negative_rank,
                                    clarity=tuple(cfg.sampling.clarity), difficulty=tuple(cfg.sampling.difficulty))
        store = PartStore(out, cfg.output.flush_every, cfg.output.flush_seconds)
        store.check_identity(identity(cfg, corpus, embedder, generator))
        done = store.load()
        redo = "rejected" if cfg.output.retry_rejected else None
        todo = [i for i in range(cfg.num_samples) if i not in done or done[i] == redo]
        finished = cfg.num_samples - len(todo)
        if done:
            log.info("%s: %d samples already finished (%d accepted), %d to go", out, len(done),
                     sum(s == "accepted" for s in done.values()), len(todo))
        synth = Synthesizer(generator, corpus, cfg.seed, cfg.validation.max_attempts,
                            cfg.validation.backoff_seconds, cfg.validation.excerpt_chars)
        with tqdm(total=cfg.num_samples, initial=finished, desc="synthesize", unit="sample", mininterval=1.0,
                  disable=None) as bar:
            _run_loop(todo, configurator, synth, store, int(generator.max_concurrency), bar,
                      int(cfg.validation.abort_after_consecutive_rejections))
        return finish(cfg, store, corpus, generator, embedder)
