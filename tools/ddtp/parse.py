"""Parse Debian Translation-xx files into descriptions keyed by Description-md5.

A Translation file is a run of RFC-822-style blocks separated by empty lines:

    Package: 0ad-data
    Description-md5: 26581e685027d5ae84824362a4ba59ee
    Description-de: <synopsis>
     <long description, wrapped, each line indented by one space>
     .
     <next paragraph>

Description-md5 is the md5 of the *English* description (synopsis + "\\n" + the raw continuation lines +
"\\n"), so it is the same key in every language; for English it is checked, which proves the block was
read byte-faithfully. Blocks that cannot become a query/positive pair are counted by reason, never raised.
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

_MD5 = re.compile(r"^[0-9a-f]{32}$")
# Debian policy: a continuation line indented further than one space is shown verbatim, and list items
# are written as " * item" or " - item"; both must keep their own line instead of being re-flowed.
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022\u00b7]|\(?\d{1,2}[.)])\s")
# read_translation() decodes with surrogateescape: undecodable bytes become lone surrogates U+DC80..U+DCFF.
# (A literal U+FFFD is real text: the Noto font descriptions explain the replacement character.)
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_HANGUL = ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))


@dataclass(frozen=True)
class Description:
    """One translated (or English) package description."""

    md5: str
    """Description-md5: md5 of the English description, the join key across languages."""
    lang: str
    """Debian language code as in the file name: en, de, zh_CN, pt_BR, ..."""
    package: str
    """Package field of the block (one of the packages sharing this description)."""
    synopsis: str
    """First line of the description: the query."""
    text: str
    """Long description, re-flowed: one line per paragraph, list item or verbatim line."""


def iter_blocks(text: str) -> list[str]:
    """Split a Translation file into blocks; only truly empty lines separate them."""
    blocks = text.replace("\r\n", "\n").split("\n\n")
    return [block.strip("\n") for block in blocks if block.strip()]


def parse_fields(block: str) -> dict[str, list[str]] | None:
    """Field name -> [value of the first line, continuation lines...]; None when the block is malformed."""
    fields: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in block.split("\n"):
        if line[:1] in (" ", "\t"):
            if current is None:
                return None
            current.append(line)
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or " " in name:
            return None
        # Only the separator's space goes: Debian's md5 covers a synopsis's trailing blanks too.
        current = fields.setdefault(name, [value.lstrip(" \t")])
    return fields


def _is_wide(char: str) -> bool:
    """CJK characters that are written without spaces between words (Hangul is spaced, so excluded)."""
    code = ord(char)
    if any(lo <= code <= hi for lo, hi in _HANGUL):
        return False
    return unicodedata.east_asian_width(char) in ("W", "F")


def _join_paragraph(lines: list[str]) -> str:
    """Re-flow the wrapped lines of one paragraph, keeping list items and verbatim lines apart."""
    out = ""
    for line in lines:
        stripped = line.strip()
        if not stripped:
            continue
        if not out:
            out = stripped
        elif line[:1] in (" ", "\t") or _LIST_ITEM.match(line):
            out += "\n" + stripped
        elif _is_wide(out[-1]) and _is_wide(stripped[0]):
            # zh/ja are wrapped mid-word at the column limit; a space here would split a word.
            out += stripped
        else:
            out += " " + stripped
    return out


def render_long(continuation: list[str]) -> str:
    """The long description from its raw continuation lines: indent stripped, paragraphs on new lines."""
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in continuation:
        line = raw[1:]
        if line.strip() == ".":
            paragraphs.append(_join_paragraph(current))
            current = []
        else:
            current.append(line)
    paragraphs.append(_join_paragraph(current))
    return "\n".join(p for p in paragraphs if p)


def english_md5(synopsis_line: str, continuation: list[str]) -> str:
    """The Description-md5 that Debian computes for an English description."""
    full = synopsis_line + "\n" + "".join(line + "\n" for line in continuation)
    return hashlib.md5(full.encode("utf-8")).hexdigest()


def parse_block(block: str, lang: str, skipped: Counter) -> Description | None:
    """One block -> Description, or None with the reason counted in `skipped`."""
    if _UNDECODABLE.search(block):
        skipped["invalid_utf8"] += 1
        return None
    fields = parse_fields(block)
    if fields is None:
        skipped["malformed_block"] += 1
        return None
    description = fields.get(f"Description-{lang}")
    if description is None:
        skipped["no_description_field"] += 1
        return None
    md5 = fields.get("Description-md5", [""])[0].lower()
    if not _MD5.match(md5):
        skipped["missing_or_bad_md5"] += 1
        return None
    synopsis, continuation = description[0], description[1:]
    if not synopsis:
        skipped["empty_synopsis"] += 1
        return None
    if lang == "en" and english_md5(synopsis, continuation) != md5:
        skipped["md5_mismatch"] += 1
        return None
    text = render_long(continuation)
    if not text:
        skipped["no_long_description"] += 1
        return None
    package = fields.get("Package", [""])[0]
    return Description(md5=md5, lang=lang, package=package, synopsis=" ".join(synopsis.split()), text=text)


def parse_translation(text: str, lang: str, skipped: Counter | None = None) -> list[Description]:
    """All usable descriptions of one Translation file's text, in file order."""
    skipped = Counter() if skipped is None else skipped
    parsed = (parse_block(block, lang, skipped) for block in iter_blocks(text))
    return [d for d in parsed if d is not None]
