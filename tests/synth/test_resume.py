"""Resume: a crashed or killed run continues without duplicates and without redoing accepted samples."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import synth_cfg
from fake_openai import FakeChatServer, answer_for

import mmtrain.synth.store as store_module
from mmtrain.synth.pipeline import synthesize
from mmtrain.synth.store import PartStore, RunLock

REPO = Path(__file__).resolve().parents[2]


class FakeGenerator:
    """In-process generator: valid answers; raises ``crash_at``-th call (an injected crash)."""

    max_concurrency = 2
    image_short_side = 64

    def __init__(self, crash_at: int | None = None):
        self.crash_at, self.calls, self.indices = crash_at, 0, []

    def generate(self, request) -> str:
        self.calls += 1
        if self.crash_at is not None and self.calls >= self.crash_at:
            raise RuntimeError("injected crash")
        index = int(request.request_id.split("-i")[1].split("-")[0])
        self.indices.append(index)
        return answer_for(request.parts, index)

    def describe(self):
        return {"backend": "fake", "model": "fake-mllm"}


def raw_records(out: Path) -> list[dict]:
    """Every record of every part file, read without the code under test."""
    return [json.loads(line) for p in sorted((out / "parts").glob("part-*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]


def test_injected_crash_then_resume(tmp_path, corpus_dir):
    out = tmp_path / "out"
    cfg = synth_cfg(out, corpus_dir, 20, "output.flush_every=3")
    crashing = FakeGenerator(crash_at=9)
    with pytest.raises(RuntimeError, match="injected crash"):
        synthesize(cfg, generator=crashing)
    before = {r["index"] for r in raw_records(out)}
    assert 0 < len(before) < 20 and not (out / "synth_manifest.json").exists()
    resumed = FakeGenerator()
    manifest = synthesize(cfg, generator=resumed)
    assert not set(resumed.indices) & before  # accepted samples are not generated again
    indices = [r["index"] for r in raw_records(out)]
    assert sorted(indices) == list(range(20))  # each sample exactly once
    assert manifest["counts"]["accepted"] == 20 and manifest["shards"]["queries"] == 20


def test_crash_while_writing_a_part(tmp_path, corpus_dir, monkeypatch):
    """A part that was being written when the run died is never read; its samples are redone."""
    out = tmp_path / "out"
    cfg = synth_cfg(out, corpus_dir, 12, "output.flush_every=4", "output.write_shards=false")
    real_replace, parts_written = os.replace, []

    def dying_replace(src, dst):
        if Path(dst).name.startswith("part-"):
            parts_written.append(dst)
            if len(parts_written) == 2:
                # A killed process leaves its temporary behind (an exception lets mmtrain.io remove
                # it): keep a copy under a temporary's name, as the kill would.
                os.link(src, Path(src).with_name(".part-killed.tmp-0.jsonl"))
                raise OSError("disk vanished (injected)")
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", dying_replace)
    with pytest.raises(OSError, match="injected"):
        synthesize(cfg, generator=FakeGenerator())
    monkeypatch.setattr(store_module.os, "replace", real_replace)
    assert len(list((out / "parts").glob("*.tmp-*"))) == 1  # the half-written part
    first = {r["index"] for r in raw_records(out)}
    assert len(first) == 4
    resumed = FakeGenerator()
    synthesize(cfg, generator=resumed)
    assert not list((out / "parts").glob("*.tmp-*"))
    assert sorted(r["index"] for r in raw_records(out)) == list(range(12))
    assert sorted(resumed.indices) == sorted(set(range(12)) - first)


def test_torn_index_line_and_unindexed_part(tmp_path, corpus_dir):
    """Killed between renaming a part and indexing it: the part is read and indexed on resume."""
    out = tmp_path / "out"
    cfg = synth_cfg(out, corpus_dir, 9, "output.flush_every=3", "output.write_shards=false")
    synthesize(cfg, generator=FakeGenerator())
    index = out / "done.jsonl"
    lines = index.read_text().splitlines()
    assert len(lines) == 3
    index.write_text("\n".join(lines[:2]) + "\n" + lines[2][:15])  # last entry torn mid-line
    status = PartStore(out).load()
    assert status == {i: "accepted" for i in range(9)}
    rebuilt = [json.loads(line) for line in index.read_text().splitlines()]
    assert [e["part"] for e in rebuilt] == ["part-000000.jsonl", "part-000001.jsonl", "part-000002.jsonl"]
    again = FakeGenerator()
    synthesize(cfg, generator=again)
    assert again.calls == 0


def test_duplicate_accepted_sample_is_an_error(tmp_path, corpus_dir):
    out = tmp_path / "out"
    synthesize(synth_cfg(out, corpus_dir, 3, "output.write_shards=false"), generator=FakeGenerator())
    part = next((out / "parts").glob("part-*.jsonl"))
    (out / "parts" / "part-000007.jsonl").write_text(part.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"sample \d is recorded twice: accepted in part-000000.jsonl"):
        PartStore(out).load()


def test_other_settings_are_refused(tmp_path, corpus_dir):
    out = tmp_path / "out"
    synthesize(synth_cfg(out, corpus_dir, 2, "output.write_shards=false"), generator=FakeGenerator())
    with pytest.raises(ValueError, match=r"other settings(.|\n)*seed: was 0, now 1"):
        synthesize(synth_cfg(out, corpus_dir, 2, "seed=1"), generator=FakeGenerator())
    with pytest.raises(ValueError, match="hard_negative_rank"):
        synthesize(synth_cfg(out, corpus_dir, 2, "retriever.hard_negative_rank=4"), generator=FakeGenerator())


def test_second_run_in_the_same_directory_is_refused(tmp_path, corpus_dir):
    out = tmp_path / "out"
    with RunLock(out):
        with pytest.raises(RuntimeError, match="another synthesis run is working"):
            synthesize(synth_cfg(out, corpus_dir, 2), generator=FakeGenerator())


def test_extend_and_retry_rejected(tmp_path, corpus_dir):
    out = tmp_path / "out"
    with FakeChatServer({2: ["invalid_json"]}) as server:
        first = synthesize(synth_cfg(out, corpus_dir, 4, f"generator.base_url={server.base_url}",
                                     "validation.max_attempts=1"))
    assert first["counts"]["rejected"] == 1 and first["shards"]["queries"] == 3
    with FakeChatServer() as server:
        second = synthesize(synth_cfg(out, corpus_dir, 6, f"generator.base_url={server.base_url}",
                                      "output.retry_rejected=true"))
    assert sorted(r["index"] for r in server.requests) == [2, 4, 5]
    assert second["counts"]["accepted"] == 6 and second["counts"]["rejected"] == 0
    assert second["shards"]["queries"] == 6


@pytest.mark.slow
def test_killed_subprocess_resumes(tmp_path, corpus_dir):
    """``python -m mmtrain.synth`` killed with SIGKILL mid-run; the same command finishes the job."""
    out = tmp_path / "out"
    n = 30
    with FakeChatServer(delay=0.3) as server:
        args = [sys.executable, "-m", "mmtrain.synth", f"out_dir={out}", f"num_samples={n}",
                f"corpus.images={corpus_dir}", "generator.model=fake-mllm", f"generator.base_url={server.base_url}",
                "generator.max_concurrency=2", "output.flush_every=1", "output.workers=1",
                "output.min_shards_per_source=1"]
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(list((out / "parts").glob("part-*.jsonl"))) < 5:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        before = {r["index"] for r in raw_records(out)}
        assert 5 <= len(before) < n
        server.requests.clear()
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert not {r["index"] for r in server.requests} & before
    indices = [r["index"] for r in raw_records(out)]
    assert sorted(indices) == list(range(n))
    assert f"{n} accepted, 0 rejected, 0 pending" in done.stdout
    assert json.loads((out / "synth_manifest.json").read_text())["shards"]["queries"] == n
