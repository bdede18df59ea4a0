"""Shard preparation, the stages tools/make_shards.py runs in order.

inputs.py lists the input files and reads this part's lines; encode.py parses, validates and tokenises
them (in worker processes); writer.py writes the samples to tar shards, one open shard per (source,
length bucket). The tool adds the options, the error budget and the manifest.
"""
