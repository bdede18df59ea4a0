"""Build data/multilingual_sample.txt from the translations that Debian's iso-codes package installs.

iso-codes (LGPL-2.1+) ships gettext catalogues that translate language, country, currency and script
names into many languages; together they cover Latin with diacritics, Cyrillic, Greek, Arabic, Hebrew,
Devanagari, Thai, Georgian, Armenian, Hangul, kana and CJK ideographs. This is a dev-time tool: the
committed sample is what tests and tokenizer training use, so CI never needs iso-codes installed.

    python tools/make_text_sample.py --out data/multilingual_sample.txt
"""
from __future__ import annotations

import argparse
import gettext
from pathlib import Path

DEFAULT_LOCALE_DIR = Path("/usr/share/locale")
DOMAINS = ("iso_639-2", "iso_3166-1", "iso_4217", "iso_15924")
# Chosen for script coverage, not for speaker counts: each adds a script or diacritics the others lack.
LOCALES = (
    "de", "fr", "es", "pt_BR", "pl", "cs", "tr", "vi", "hu", "ro", "sv", "fi",
    "ru", "uk", "bg", "sr", "el", "ar", "fa", "he", "hi", "bn", "ta", "th", "ka", "hy", "am",
    "zh_CN", "zh_TW", "ja", "ko",
)
NAMES_PER_LINE = 8
MAX_BYTES_PER_LOCALE = 10_000


def read_catalogue(locale_dir: Path, locale: str, domain: str) -> dict[str, str]:
    """Return msgid -> translation for one catalogue, or {} when the locale lacks it."""
    path = locale_dir / locale / "LC_MESSAGES" / f"{domain}.mo"
    if not path.is_file():
        return {}
    with path.open("rb") as handle:
        catalogue = gettext.GNUTranslations(handle)._catalog
    # Untranslated entries repeat the English msgid; keeping them would bias the sample towards English.
    return {k: v for k, v in catalogue.items() if isinstance(k, str) and k and v and v != k}


def lines_for(names: list[str]) -> list[str]:
    """Group names into comma-separated lines, so that sentencepiece sees sentence-sized inputs."""
    return [", ".join(names[i:i + NAMES_PER_LINE]) for i in range(0, len(names), NAMES_PER_LINE)]


def locale_lines(locale_dir: Path, locale: str) -> list[str]:
    """Lines of translated names for one locale, capped at MAX_BYTES_PER_LOCALE."""
    lines: list[str] = []
    num_bytes = 0
    for domain in DOMAINS:
        catalogue = read_catalogue(locale_dir, locale, domain)
        for line in lines_for([catalogue[k] for k in sorted(catalogue)]):
            if num_bytes >= MAX_BYTES_PER_LOCALE:
                return lines
            lines.append(line)
            num_bytes += len(line.encode("utf-8")) + 1
    return lines


def english_lines(locale_dir: Path) -> list[str]:
    """The English source names (msgids) of one catalogue set, capped like a locale."""
    catalogue = read_catalogue(locale_dir, "de", "iso_3166-1") | read_catalogue(locale_dir, "de", "iso_639-2")
    lines = lines_for(sorted(catalogue))
    return lines[: MAX_BYTES_PER_LOCALE // 80]


def make_text_sample(out_path: str | Path, locale_dir: str | Path = DEFAULT_LOCALE_DIR) -> Path:
    """Write the sample and return its path; raises FileNotFoundError when iso-codes is missing."""
    locale_dir = Path(locale_dir)
    lines = english_lines(locale_dir)
    for locale in LOCALES:
        found = locale_lines(locale_dir, locale)
        print(f"{locale}: {len(found)} lines")
        lines.extend(found)
    if not lines:
        raise FileNotFoundError(
            f"no iso-codes catalogues under {locale_dir}; install them with 'apt-get install iso-codes' "
            "or pass --locale-dir")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines, {out_path.stat().st_size} bytes to {out_path}")
    return out_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/multilingual_sample.txt", help="where to write the sample")
    parser.add_argument("--locale-dir", default=str(DEFAULT_LOCALE_DIR), help="root of the gettext catalogues")
    args = parser.parse_args(argv)
    make_text_sample(args.out, args.locale_dir)


if __name__ == "__main__":
    main()
