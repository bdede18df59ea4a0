"""The pair kind of sample (the contrastive stages): a query with its passages -> a group -> a `Batch`.

A sample's `.json` member is checked (records.check_shard_record by default), its texts become ids
(the `.tok` member, vocabulary-checked, or the tokenizer) truncated to the query and passage limits,
and its group is drawn as the reference draws it (collate.choose_group). A query with fewer negatives
than the group needs repeats some; that is counted per source (`negatives_repeated/<source>`).

Per source (data.source_rules, framework/data/sources.py): the group carries its source's batch rules
and the token-id hashes the objective masks duplicates by (framework/data/dedup.py). A `.tok` member
holds the ids of the prefixed texts (tools/make_shards.py applied the prompts); without one the texts
are prefixed here with the prompts the manifest records, which the stage's rules must equal (checked
by `check_shards` before any step).
"""
from __future__ import annotations

from framework.data.collate import Batch, Group, choose_group, collate
from framework.data.config import StreamConfig
from framework.data.decode import TokenIds, Validate, sample_json
from framework.data.dedup import ids_hash
from framework.data.format import TOKENS_EXT
from framework.data.plan import ShardRef
from framework.data.sources import BatchRules, Prompts, batch_rules, prompts_for, stage_prompts
from framework.data.stats import BatchStats


class PairDecoder:
    """Samples -> groups -> batches, for one epoch of a stream."""

    def __init__(self, cfg: StreamConfig, tokenizer, validate: Validate, epoch: int):
        self.cfg, self.validate, self.epoch = cfg, validate, epoch
        self.token_ids, self.pad_id = TokenIds(tokenizer), tokenizer.pad_token_id
        data = cfg.data
        self.limits = (data.query_max_length, data.passage_max_length)
        self.rules: dict[str, BatchRules] = {}
        # Shards given directly (no manifest): the stage's rules alone say how `.json`-only samples are prefixed.
        self.prompts: dict[str, Prompts] = {}

    def decode(self, sample: dict, stats: BatchStats) -> Group:
        record = self.validate(sample_json(sample))
        source = record.get("source") or sample["__key__"].split("/", 1)[0]
        texts = [record["query"], *record["pos"], *record["neg"]]
        if TOKENS_EXT not in sample:
            prompts = self._prompts(source)
            if prompts.active:
                texts = prompts.texts(record["query"], texts[1:], record.get("prompt"))
        query_limit, passage_limit = self.limits
        ids = self.token_ids(sample, texts, [query_limit] + [passage_limit] * (len(texts) - 1), stats)
        group_size = self.cfg.data.group_size
        group = choose_group(record, ids, group_size, self.cfg.seed, self.epoch, sample["__key__"])
        if not group.has_negatives:
            stats.count("no_negatives")
        elif 0 < len(record["neg"]) < group_size - 1:
            stats.count(f"negatives_repeated/{source}")
        rules = self._rules(source)
        group.in_batch = rules.in_batch_negatives
        group.passage_hashes = [ids_hash(seq) for seq in group.passage_ids]
        if rules.mask_duplicates:
            group.positive_hashes = [ids_hash(seq) for seq in ids[1:1 + len(record["pos"])]]
        return group

    def _rules(self, source: str) -> BatchRules:
        if source not in self.rules:
            self.rules[source] = batch_rules(self.cfg.data.source_rules, source)
        return self.rules[source]

    def _prompts(self, source: str) -> Prompts:
        if source not in self.prompts:
            self.prompts[source] = prompts_for(self.cfg.data.source_rules, source)
        return self.prompts[source]

    def collate(self, groups: list[Group], key: tuple, stats: BatchStats) -> Batch:
        return collate(groups, self.cfg.data.group_size, self.pad_id, key, stats)

    def check_shards(self, shards: list[ShardRef], manifest_path) -> None:
        """The stage's prompts must be the ones the shards were made with (ValueError naming both); those
        then prefix the texts of samples without a `.tok` member."""
        self.prompts = stage_prompts(self.cfg.data.source_rules, manifest_path, {s.source for s in shards})
