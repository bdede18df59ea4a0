"""The pair kind of sample (the contrastive stages): a query with its passages -> a group -> a `Batch`.

A sample's `.json` member is checked (records.check_shard_record by default), its texts become ids
(the `.tok` member, vocabulary-checked, or the tokenizer) truncated to the query and passage limits,
and its group is drawn as the reference draws it (collate.choose_group). A query with fewer negatives
than the group needs repeats some; that is counted per source (`negatives_repeated/<source>`).
"""
from __future__ import annotations

from framework.data.collate import Batch, Group, choose_group, collate
from framework.data.config import StreamConfig
from framework.data.decode import TokenIds, Validate, sample_json
from framework.data.plan import ShardRef
from framework.data.stats import BatchStats

class PairDecoder:
    """Samples -> groups -> batches, for one epoch of a stream."""

    def __init__(self, cfg: StreamConfig, tokenizer, validate: Validate, epoch: int):
        self.cfg, self.validate, self.epoch = cfg, validate, epoch
        self.token_ids, self.pad_id = TokenIds(tokenizer), tokenizer.pad_token_id
        data = cfg.data
        self.limits = (data.query_max_length, data.passage_max_length)

    def decode(self, sample: dict, stats: BatchStats) -> Group:
        record = self.validate(sample_json(sample))
        texts = [record["query"], *record["pos"], *record["neg"]]
        query_limit, passage_limit = self.limits
        ids = self.token_ids(sample, texts, [query_limit] + [passage_limit] * (len(texts) - 1), stats)
        group_size = self.cfg.data.group_size
        group = choose_group(record, ids, group_size, self.cfg.seed, self.epoch, sample["__key__"])
        if not group.has_negatives:
            stats.count("no_negatives")
        elif 0 < len(record["neg"]) < group_size - 1:
            source = record.get("source") or sample["__key__"].split("/", 1)[0]
            stats.count(f"negatives_repeated/{source}")
        return group

    def collate(self, groups: list[Group], key: tuple, stats: BatchStats) -> Batch:
        return collate(groups, self.cfg.data.group_size, self.pad_id, key, stats)

    def check_shards(self, shards: list[ShardRef], manifest_path) -> None:
        """Pair shards need no check beyond the records'."""
