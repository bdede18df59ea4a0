"""Build a multilingual retrieval corpus from Debian's translated package descriptions (DDTP).

Query = a package's synopsis, positive = its long description, in 15 languages (monolingual "xx") and
from each language to English ("xx-en"); train/dev/test split by groups of Description-md5; 7 BM25 hard
negatives per train query. See tools/ddtp/ for the steps and tools/ddtp/export.py for the output layout;
this module is the command line tools/build_ddtp.py runs.

    python tools/build_ddtp.py --out /data/ddtp                 # fetch with apt, full build, mined
    python tools/build_ddtp.py --out /data/ddtp --no-mine       # full build without negatives (fast)
    python tools/build_ddtp.py --sample                         # rebuild the shipped data/ddtp/ sample
    python tools/build_ddtp.py --translations /var/lib/apt/lists --out X   # already fetched files

Fetching needs a Debian machine with apt and access to a Debian mirror; reading --translations does not.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

# Relative imports: tools/build_ddtp.py runs this package as `ddtp` (a script's own folder heads the import
# path), the tests and `python -m tools.build_ddtp` as `tools.ddtp`.
from .export import beir_counts, beir_from_rows, write_beir_split, write_rows, write_stats
from .fetch import (DEFAULT_KEYRING, DEFAULT_MIRROR, LANGUAGES, debian_suite, find_translation_files,
                    read_translation, release_dates, run_apt_update, write_apt_config)
from .negatives import mine_train
from .pairs import DEFAULT_FRACTIONS, SPLITS, Pair, all_pairs, assign_splits, index_by_md5, split_pairs
from .parse import Description, parse_translation
from .sample import SAMPLE_CAPS, select_sample

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO_ROOT / "data" / "ddtp"
SplitPairs = dict[str, dict[str, list[Pair]]]


def load_descriptions(translations_dir: Path, languages: tuple[str, ...] = LANGUAGES
                      ) -> tuple[dict[str, list[Description]], dict[str, Counter], list[str]]:
    """Parse every Translation file under translations_dir: (descriptions, skipped counts, file names)."""
    files = find_translation_files(translations_dir, languages)
    descriptions: dict[str, list[Description]] = {}
    skipped: dict[str, Counter] = {lang: Counter() for lang in sorted(files)}
    names = []
    for lang in sorted(files):
        descriptions[lang] = []
        for path in files[lang]:
            descriptions[lang] += parse_translation(read_translation(path), lang, skipped[lang])
            names.append(path.name)
        print(f"parsed {lang}: {len(descriptions[lang])} descriptions, skipped {dict(skipped[lang])}", flush=True)
    missing = sorted(set(languages) - set(files))
    if missing:
        print(f"no Translation file for {missing}: the mirror does not publish them for this suite", flush=True)
    return descriptions, skipped, names


def fetch_translations(work_dir: Path, suite: str | None = None, mirror: str = DEFAULT_MIRROR,
                       keyring: Path = DEFAULT_KEYRING, languages: tuple[str, ...] = LANGUAGES) -> Path:
    """apt-get update into work_dir with a private configuration; return the lists directory."""
    config = write_apt_config(work_dir, suite or debian_suite(), mirror, keyring, languages)
    return run_apt_update(config)


def prepare(descriptions: dict[str, list[Description]], skipped: dict[str, Counter],
            fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> tuple[SplitPairs, dict[str, int]]:
    """Join on md5, split by group, form pairs: (split -> direction -> pairs, descriptions per language)."""
    by_lang = index_by_md5(descriptions, skipped)
    splits = assign_splits(by_lang, fractions)
    pairs = split_pairs(all_pairs(by_lang, skipped), splits)
    return pairs, {lang: len(table) for lang, table in sorted(by_lang.items())}


def write_corpus(out_dir: Path, pairs: SplitPairs, negatives: dict[str, dict[str, list[str]]] | None,
                 skipped: dict[str, Counter], source: dict, beir: bool = True) -> dict:
    """Rows of all splits, BEIR folders for dev/test (when `beir`), and stats.json; returns the stats."""
    for owned in (*SPLITS, "beir"):
        # Only the folders this tool writes: a rebuild must not keep a direction the new input lacks.
        shutil.rmtree(out_dir / owned, ignore_errors=True)
    rows = {}
    for split in SPLITS:
        negs = None
        if split == "train" and negatives is not None:
            negs = {d: [negatives[d][p.md5] for p in ps] for d, ps in pairs[split].items()}
        rows[split] = write_rows(out_dir, split, pairs[split], negs)
    eval_splits = [s for s in SPLITS if s != "train"]
    if beir:
        beir_stats = {s: write_beir_split(out_dir / "beir", s, pairs[s]) for s in eval_splits}
    else:
        beir_stats = {s: {d: beir_counts(ps) for d, ps in sorted(pairs[s].items()) if ps} for s in eval_splits}
    stats = {
        "source": source,
        "pairs": rows,
        "split_sizes": {split: sum(rows[split].values()) for split in SPLITS},
        "beir": beir_stats,
        "skipped": {lang: dict(sorted(c.items())) for lang, c in sorted(skipped.items())},
    }
    write_stats(out_dir / "stats.json", stats)
    return stats


def select_and_mine(pairs: SplitPairs, sample: bool, mine: bool, num_neg: int = 7,
                    rank_range: tuple[int, int] = (3, 50), seed: int = 0
                    ) -> tuple[SplitPairs, dict[str, dict[str, list[str]]] | None]:
    """(pairs to write, train negatives by direction and md5); the sample is cut before mining."""
    if not sample:
        return pairs, mine_train(pairs["train"], None, num_neg, rank_range, seed) if mine else None
    chosen = {split: select_sample(pairs[split], SAMPLE_CAPS[split]) for split in SPLITS}
    # Mine the sampled queries against the *full* train pool: the sample's rows equal the full build's.
    wanted = {d: {p.md5 for p in ps} for d, ps in chosen["train"].items()}
    return chosen, mine_train(pairs["train"], wanted, num_neg, rank_range, seed) if mine else None


def build_ddtp(out_dir: Path, translations: Path | None = None, mine: bool = True, sample: bool = False,
               suite: str | None = None, mirror: str = DEFAULT_MIRROR, keyring: Path = DEFAULT_KEYRING,
               languages: tuple[str, ...] = LANGUAGES, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
               num_neg: int = 7, rank_range: tuple[int, int] = (3, 50), seed: int = 0) -> dict:
    """Fetch (unless `translations` is given), parse, split, mine and write; returns stats.json's content."""
    start = time.monotonic()
    if translations is None:
        suite = suite or debian_suite()
    with tempfile.TemporaryDirectory(prefix="ddtp-apt-") as tmp:
        lists_dir = translations or fetch_translations(Path(tmp), suite, mirror, keyring, languages)
        descriptions, skipped, files = load_descriptions(lists_dir, languages)
        dates = release_dates(lists_dir)
    pairs, num_descriptions = prepare(descriptions, skipped, fractions)
    pairs, negatives = select_and_mine(pairs, sample, mine, num_neg, rank_range, seed)
    source = {"files": files, "release_dates": dates, "suite": suite,
              "mirror": None if translations else mirror, "descriptions": num_descriptions,
              "sample": sample, "mined": mine, "split_fractions": list(fractions),
              "num_neg": num_neg if mine else 0, "rank_range": list(rank_range), "seed": seed}
    # The sample ships rows only (BEIR folders would more than double its size); --beir-from derives them.
    stats = write_corpus(out_dir, pairs, negatives, skipped, source, beir=not sample)
    print(f"wrote {out_dir} in {time.monotonic() - start:.0f}s: {stats['split_sizes']}", flush=True)
    return stats


def _fractions(text: str) -> tuple[float, float, float]:
    """--split: three fractions or percentages, e.g. 0.8,0.1,0.1 or 80,10,10."""
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split {text!r}: give three numbers, e.g. 80,10,10")
    scale = 100.0 if sum(parts) > 1.5 else 1.0
    return parts[0] / scale, parts[1] / scale, parts[2] / scale


def _languages(text: str) -> tuple[str, ...]:
    """--languages: Debian codes such as de,zh_CN,pt_BR; English is required as the join target."""
    languages = tuple(sorted({x.strip() for x in text.split(",") if x.strip()}))
    if "en" not in languages:
        raise argparse.ArgumentTypeError(f"--languages {text!r} must include en (the cross-lingual target)")
    return languages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="build_ddtp.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output directory of the full build (or of --beir-from)")
    parser.add_argument("--sample", action="store_true", help=f"write the shipped sample to {SAMPLE_DIR}")
    parser.add_argument("--sample-out", type=Path, default=SAMPLE_DIR, help="where --sample writes")
    parser.add_argument("--beir-from", type=Path, metavar="ROWS_DIR",
                        help="only write BEIR folders (OUT/beir/...) from the dev/test rows of a built corpus, "
                             "e.g. --beir-from data/ddtp --out /tmp/ddtp")
    parser.add_argument("--translations", type=Path,
                        help="read *_i18n_Translation-xx files from this folder instead of fetching with apt")
    parser.add_argument("--no-mine", action="store_true", help="skip BM25 negative mining (train rows get neg=[])")
    parser.add_argument("--suite", help="Debian suite to fetch (default: this machine's codename)")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="Debian mirror URL")
    parser.add_argument("--keyring", type=Path, default=DEFAULT_KEYRING, help="archive keyring for apt")
    parser.add_argument("--languages", type=_languages, default=LANGUAGES,
                        help=f"comma-separated Debian language codes (default: {','.join(LANGUAGES)})")
    parser.add_argument("--split", type=_fractions, default=DEFAULT_FRACTIONS, help="train,dev,test e.g. 80,10,10")
    parser.add_argument("--num-neg", type=int, default=7, help="negatives per train query")
    parser.add_argument("--rank-range", type=int, nargs=2, default=(3, 50), metavar=("LO", "HI"),
                        help="draw negatives from BM25 ranks [LO, HI) after removing positives")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negative draw")
    args = parser.parse_args(argv)
    if args.sample == (args.out is not None):
        parser.error("give exactly one of --out DIR (full build, or with --beir-from) and --sample")
    if args.beir_from is not None and args.out is None:
        parser.error("--beir-from needs --out DIR for the BEIR folders")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.beir_from is not None:
        counts = beir_from_rows(args.beir_from, args.out / "beir")
        print(f"wrote BEIR folders under {args.out / 'beir'}: "
              f"{ {split: len(dirs) for split, dirs in counts.items()} } directions per split")
        return
    build_ddtp(args.sample_out if args.sample else args.out, translations=args.translations,
               mine=not args.no_mine, sample=args.sample, suite=args.suite, mirror=args.mirror,
               keyring=args.keyring, languages=args.languages, fractions=args.split, num_neg=args.num_neg,
               rank_range=tuple(args.rank_range), seed=args.seed)
