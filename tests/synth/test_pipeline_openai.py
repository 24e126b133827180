"""End to end through the real ``openai`` client against a local OpenAI-compatible server (loopback):
exact accepted / retried / rejected counts, what was sent, and shards read back by shards.py."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
from conftest import synth_cfg
from fake_openai import FakeChatServer
from PIL import Image

from mmtrain.data.shards import iter_samples, read_manifest
from mmtrain.data.stream import TrainStream
from mmtrain.synth.configure import VQA_INSTRUCTION
from mmtrain.synth.generators import GeneratorConfigError
from mmtrain.synth.pipeline import synthesize
from mmtrain.synth.store import PartStore

# sample -> the server's behaviour per attempt (default: valid at once); max_attempts = 3
SCRIPT = {1: ["invalid_json", "valid"], 2: ["schema", "schema", "valid"], 3: ["timeout", "valid"],
          4: ["invalid_json"] * 3, 5: ["timeout"] * 3, 6: ["schema", "timeout", "invalid_json"], 7: ["fenced"],
          8: ["http_500", "valid"]}
ATTEMPTS = {0: 1, 1: 2, 2: 3, 3: 2, 4: 3, 5: 3, 6: 3, 7: 1, 8: 2, 9: 1}
ACCEPTED = {0, 1, 2, 3, 7, 8, 9}
# Hand-written from M-BEIR's task table (schema.py): query modality -> document modality.
TASK_ID = {"T2I": 0, "T2IT": 2, "I2T": 3, "I2I": 4, "IT2T": 6, "IT2I": 7, "IT2IT": 8}
TABLE = {"classification": "Classification", "retrieval": "Retrieval", "vqa": "VQA"}


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp("synth") / "out"
    with FakeChatServer(SCRIPT, timeout_sleep=1.5) as server:
        cfg = synth_cfg(out, corpus_dir, 10, f"generator.base_url={server.base_url}", "generator.timeout=0.5",
                        "generator.max_concurrency=4", "validation.max_attempts=3")
        manifest = synthesize(cfg)
    records = {r["index"]: r for r in PartStore(out).records()}
    return out, manifest, server, records


def test_exact_counts(run):
    out, manifest, server, _ = run
    assert manifest["counts"] == {
        "samples": 10, "finished": 10, "accepted": 7, "rejected": 3, "pending": 0,
        "attempts": 21, "retries": 11, "retried_samples": 7,
        "failures_by_reason": {"api_error": 1, "invalid_json": 5, "schema": 3, "timeout": 5},
        "rejected_by_reason": {"invalid_json": 2, "timeout": 1},
        "ignored_fields": manifest["counts"]["ignored_fields"],  # checked below
    }
    # the client sent exactly one request per attempt: no hidden retries inside the openai client
    assert {i: server.attempts_of(i) for i in range(10)} == ATTEMPTS
    assert len(server.requests) == 21
    assert json.loads((out / "synth_manifest.json").read_text())["counts"] == manifest["counts"]


def test_rejections_are_reported(run):
    out, manifest, _, _ = run
    rejected = {r["index"]: r for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert set(rejected) == {4, 5, 6} == {r["index"] for r in manifest["rejected"]}
    assert rejected[4]["reason"] == "invalid_json" and rejected[4]["attempts"] == 3
    assert rejected[4]["last_response_excerpt"].startswith('{"image_descriptions": [{"image": "cut off')
    assert rejected[5]["reason"] == "timeout" and rejected[5]["last_response_excerpt"] is None
    assert [f["reason"] for f in rejected[6]["failures"]] == ["schema", "timeout", "invalid_json"]
    assert "revised_sample" in rejected[6]["failures"][0]["message"]
    assert rejected[6]["config"]["index"] == 6


def test_requests(run):
    """What went over the wire: model, sampling settings, seed, JSON mode, one image per configured image."""
    _, _, server, records = run
    for req in server.requests:
        body, config = req["body"], records[req["index"]]["config"]
        assert body["model"] == "fake-mllm" and body["temperature"] == 1.0 and body["top_p"] == 1.0
        assert body["response_format"] == {"type": "json_object"} and isinstance(body["seed"], int)
        content = body["messages"][0]["content"]
        images = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
        expected = [config[k] for k in ("query_image", "positive_image", "negative_image") if config[k]]
        assert len(images) == len(expected) >= 1
        for url in images:
            assert url.startswith("data:image/jpeg;base64,")
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
                assert im.format == "JPEG"
        assert content[-1]["type"] == "text" and "revised_sample" in content[-1]["text"]
    seeds = {(r["index"], r["attempt"]): r["body"]["seed"] for r in server.requests}
    assert seeds[(1, 1)] != seeds[(1, 2)]  # a retry samples anew


def test_accepted_records_and_ignored_fields(run):
    _, manifest, _, records = run
    assert {i for i, r in records.items() if r["status"] == "accepted"} == ACCEPTED
    ignored = 0
    for i in ACCEPTED:
        c = records[i]["config"]
        query_side, doc_side = c["modality"].split("2")
        # the fake server fills every text field: those the modality has no room for are ignored
        ignored += ("T" not in query_side) + 2 * ("T" not in doc_side) + (c["task"] == "vqa")
    assert manifest["counts"]["ignored_fields"] == ignored


def test_shards_read_back(run):
    """The shards load through shards.py with the right task, modality and language; the training
    stream reads them like any converted source."""
    out, manifest, _, records = run
    shard_dir = out / "shards"
    shard_manifest = read_manifest(shard_dir)
    assert shard_manifest["source_family"] == "mme5_synthetic"
    seen = {}
    for entry in shard_manifest["sources"].values():
        for s in iter_samples(shard_dir / p for p in entry["shards"]):
            seen[s["json"]["qid"]] = s
    assert sorted(seen) == sorted(f"synth-s0:{i}" for i in ACCEPTED)
    assert manifest["shards"]["queries"] == 7
    for i in ACCEPTED:
        s, c = seen[f"synth-s0:{i}"], records[i]["config"]
        j = s["json"]
        query_side, doc_side = c["modality"].split("2")
        assert (j["language"], j["subset"], j["dataset"], j["task_id"]) == (c["language"], c["modality"],
                                                                            TABLE[c["task"]], TASK_ID[c["modality"]])
        assert j["source"] == "mme5_synthetic"
        assert j["instructions"] == [VQA_INSTRUCTION if c["task"] == "vqa" else f"Instruction for sample {i}."]
        assert j["query"]["text"] == (f"query text {i}" if "T" in query_side else "")
        assert (j["query"]["image"] is not None) == ("I" in query_side) == ("query.jpg" in s)
        pos, neg = j["positives"][0], j["negatives"][0]
        assert pos["text"] == (f"positive {i}" if "T" in doc_side else None)
        assert neg["text"] == (f"negative {i}" if "T" in doc_side else None)
        assert ("pos.0.jpg" in s) == ("neg.0.jpg" in s) == ("I" in doc_side)
        assert j["neg_dids"] == [neg["did"]] and pos["did"] != neg["did"]
    stream = TrainStream(shard_dir, batch_size=3, num_negatives=1, max_passes=1, shuffle_buffer=1,
                         instruction="first")
    examples = [e for batch in stream for e in batch]
    assert len(examples) == 7 and all(len(e.negatives) == 1 and e.query.instruction for e in examples)


def test_rerun_of_a_finished_run_sends_nothing(run, corpus_dir):
    out, manifest, _, _ = run
    before = (out / "shards" / "manifest.json").stat().st_mtime_ns
    with FakeChatServer() as server:
        again = synthesize(synth_cfg(out, corpus_dir, 10, f"generator.base_url={server.base_url}"))
    assert server.requests == [] and again["counts"] == manifest["counts"]
    assert (out / "shards" / "manifest.json").stat().st_mtime_ns == before  # shards up to date: kept


def test_rate_limit(tmp_path, corpus_dir):
    with FakeChatServer() as server:
        cfg = synth_cfg(tmp_path / "out", corpus_dir, 4, f"generator.base_url={server.base_url}",
                        "generator.requests_per_minute=240", "generator.max_concurrency=4",
                        "output.write_shards=false")
        synthesize(cfg)
    starts = sorted(r["time"] for r in server.requests)
    assert len(starts) == 4
    assert all(b - a >= 0.25 - 0.02 for a, b in zip(starts, starts[1:]))  # 240/min = one per 0.25 s


def test_a_refused_key_stops_the_run(tmp_path, corpus_dir):
    """HTTP 401 is a configuration error: the run stops instead of rejecting every sample."""
    with FakeChatServer() as server:
        server.httpd.RequestHandlerClass.do_POST = lambda self: self.send_error(401, "bad key")
        cfg = synth_cfg(tmp_path / "out", corpus_dir, 5, f"generator.base_url={server.base_url}")
        with pytest.raises(GeneratorConfigError, match="refused model 'fake-mllm'"):
            synthesize(cfg)
    assert PartStore(tmp_path / "out").load() == {}


def test_consecutive_rejections_abort(tmp_path, corpus_dir):
    script = {i: ["invalid_json"] for i in range(20)}
    with FakeChatServer(script) as server:
        cfg = synth_cfg(tmp_path / "out", corpus_dir, 20, f"generator.base_url={server.base_url}",
                        "validation.max_attempts=1", "validation.abort_after_consecutive_rejections=4",
                        "generator.max_concurrency=1")
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"4 samples in a row were rejected \(reasons: \['invalid_json'\]\)"):
            synthesize(cfg)
    assert len(server.requests) <= 6 and time.monotonic() - t0 < 30
    assert set(PartStore(tmp_path / "out").load().values()) == {"rejected"}  # kept and reported, not lost


def only(task: str, tag: str) -> list[str]:
    """Overrides that leave one (task, modality) row of Table 6 with a weight."""
    from mmtrain.synth.configure import TABLE6

    return [f"sampling.task_modality.{t}.{m}={1 if (t, m) == (task, tag) else 0}"
            for t, rows in TABLE6.items() for m in rows]


def test_an_image_without_distinct_neighbours_is_rejected(tmp_path):
    """Copies of one picture: no positive or hard negative can be retrieved; each sample is rejected
    (reason ``configuration``) without a request, and the run goes on."""
    corpus = tmp_path / "copies"
    corpus.mkdir()
    for i in range(6):
        Image.new("RGB", (16, 16), (10, 200, 30)).save(corpus / f"same{i}.png")
    with FakeChatServer() as server:
        cfg = synth_cfg(tmp_path / "out", corpus, 3, f"generator.base_url={server.base_url}",
                        *only("retrieval", "I2I"))
        manifest = synthesize(cfg)
    assert server.requests == []
    assert manifest["counts"]["rejected_by_reason"] == {"configuration": 3}
    assert "neighbours below similarity 0.999" in manifest["rejected"][0]["message"]
