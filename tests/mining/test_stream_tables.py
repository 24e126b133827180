"""The continual stage's stream: multimodal + text queries mixed, each with negatives from its own table,
read from the pool that table was mined in."""

from __future__ import annotations

import itertools

from mmtrain.data.convert import convert
from mmtrain.data.mix import write_mix
from mmtrain.data.negatives import NegativesTable
from mmtrain.data.shards import load_pool
from mmtrain.data.stream import TrainStream
from mmtrain.mining.miner import HardNegativeMiner
from mmtrain.mining.rules import ModalityAwareRule, PositiveAwareRule
from mmtrain.mining.table import write_table

from mining_helpers import HashEncoder, HashProcessor


def test_two_tables_two_pools(toy_shards, tmp_path):
    beir = tmp_path / "beir_shards"
    convert("beir", beir, root=toy_shards.parent / "world" / "beir", samples_per_shard=4, workers=1)
    mm_table, _ = HardNegativeMiner(toy_shards, tmp_path / "mm", ModalityAwareRule()).run(HashEncoder(), HashProcessor())
    text_table, _ = HardNegativeMiner(beir, tmp_path / "text", PositiveAwareRule(num_negatives=3, top_k=10)).run(
        HashEncoder(), HashProcessor())
    mixed = tmp_path / "mix"
    manifest = write_mix(mixed, {toy_shards: 1.0, beir: 1.0})
    stream = TrainStream(mixed, weights=manifest["weights"], batch_size=8, num_negatives=1, shuffle_buffer=4,
                         negatives_table=[mm_table, text_table])
    tables = {"mm": NegativesTable(mm_table).as_dict(), "text": NegativesTable(text_table).as_dict()}
    docs = {item.id: item for item in load_pool(beir, "train")[0]}
    seen = {"mm": 0, "text": 0}
    for batch in itertools.islice(iter(stream), 12):
        for ex in batch:
            kind = "text" if ex.query.id in tables["text"] else "mm"
            mined = {n.id for n in tables[kind].get(ex.query.id, [])}
            assert {n.id for n in ex.negatives} <= mined and len(ex.negatives) == min(1, len(mined))
            for n in ex.negatives:
                seen[kind] += 1
                if kind == "text":  # the content comes from the BEIR corpus, by id
                    assert n.text == docs[n.id].text and n.modality == "text"
    assert seen["mm"] > 0 and seen["text"] > 0



def test_a_query_no_table_holds_is_not_an_error(toy_shards, tmp_path):
    full, _ = HardNegativeMiner(toy_shards, tmp_path / "mm", ModalityAwareRule()).run(HashEncoder(), HashProcessor())
    mined = NegativesTable(full).as_dict()
    half = write_table(tmp_path / "half", {q: v for q, v in mined.items() if q % 2 == 0}, {"pool": {}})
    stream = TrainStream(toy_shards, batch_size=8, num_negatives=1, shuffle_buffer=4, negatives_table=[half])
    outside = 0
    for batch in itertools.islice(iter(stream), 10):
        for ex in batch:
            if ex.query.id % 2:  # no table holds it: its own negatives (M-BEIR's toy rows have none)
                outside += 1
                assert ex.negatives == []
            else:
                assert {n.id for n in ex.negatives} <= {n.id for n in mined[ex.query.id]}
    assert outside > 0
