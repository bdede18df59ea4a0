"""A multilingual retrieval corpus from Debian's translated package descriptions (DDTP).

Data flow, one module per step (build.py runs them in order; tools/build_ddtp.py is its command line):

    fetch.py      apt-get update with a private configuration -> Translation-xx files -> decoded text
    parse.py      Translation blocks -> Description(md5, lang, package, synopsis, text); bad blocks counted
    pairs.py      descriptions joined on Description-md5 -> split by group of md5s -> query/positive pairs
    mine.py       BM25 index over one language's pool, batched ranking, seeded draw from a rank range
    negatives.py  one ranking per language's train pool -> 7 hard negatives per train query and direction
    export.py     gzip JSONL rows per split and direction, BEIR-style dev/test folders, stats.json
    sample.py     the small deterministic subset shipped in data/ddtp/
    build.py      the steps in order, and the command line's options
"""
