"""Fetch Debian's Translation-xx files with apt, leaving the system's apt state untouched.

apt-get runs with APT_CONFIG pointing at a private configuration whose Dir::Etc::Parts, source list,
Dir::State::Lists and Dir::Cache all live in one work directory: the system's apt.conf.d snippets are
not read (Docker images set Acquire::Languages "none" there), and nothing under /var/lib/apt changes.
With Acquire::GzipIndexes apt keeps each Translation file as the mirror served it (.lz4 on bookworm);
read_translation() decodes plain, gzip, xz, bzip2, lz4 and zstd by their magic bytes.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

LANGUAGES = ("en", "de", "fr", "it", "da", "ja", "ko", "ru", "zh_CN", "pt_BR", "pl", "uk", "sk", "es", "cs")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# apt names list files after the URL with "_" quoted as %5f: ..._main_i18n_Translation-pt%5fBR.lz4
_TRANSLATION_FILE = re.compile(r"_i18n_Translation-([A-Za-z%0-9]+?)(?:\.(?:lz4|gz|xz|bz2|zst))?$")


def debian_suite(os_release: Path = Path("/etc/os-release")) -> str:
    """The machine's Debian codename (bookworm, trixie, ...) from os-release."""
    if os_release.is_file():
        for line in os_release.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME" and value.strip('"'):
                return value.strip('"')
    raise ValueError(f"no VERSION_CODENAME in {os_release}; pass --suite (e.g. --suite bookworm)")


def write_apt_config(work_dir: Path, suite: str, mirror: str = DEFAULT_MIRROR,
                     keyring: Path = DEFAULT_KEYRING, languages: tuple[str, ...] = LANGUAGES) -> Path:
    """Write a private apt configuration (and its one-line source list) under work_dir; return its path."""
    if not keyring.is_file():
        raise FileNotFoundError(f"Debian archive keyring {keyring} is missing; install it with "
                                "'apt-get install debian-archive-keyring' or pass --keyring")
    work_dir = work_dir.resolve()
    for sub in ("parts", "sources.list.d", "lists/partial", "cache/archives/partial"):
        (work_dir / sub).mkdir(parents=True, exist_ok=True)
    # apt downloads as the unprivileged _apt user, which must be able to reach lists/partial.
    work_dir.chmod(0o755)
    (work_dir / "sources.list").write_text(f"deb [signed-by={keyring}] {mirror} {suite} main\n", encoding="utf-8")
    quoted = "".join(f'"{lang}";' for lang in languages)
    config = "\n".join([
        f'Dir::Etc::Parts "{work_dir / "parts"}";',
        f'Dir::Etc::SourceList "{work_dir / "sources.list"}";',
        f'Dir::Etc::SourceParts "{work_dir / "sources.list.d"}";',
        f'Dir::State::Lists "{work_dir / "lists"}";',
        f'Dir::Cache "{work_dir / "cache"}";',
        # Only the Translation files are wanted; Packages alone is ~9 MB compressed.
        'Acquire::IndexTargets::deb::Packages::DefaultEnabled "false";',
        'Acquire::GzipIndexes "true";',
        f"Acquire::Languages {{{quoted}}};",
        "",
    ])
    path = work_dir / "apt.conf"
    path.write_text(config, encoding="utf-8")
    return path


def run_apt_update(config_path: Path) -> Path:
    """Run apt-get update under the private configuration; return the lists directory it filled."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise FileNotFoundError("apt-get not found: fetching needs a Debian machine; elsewhere pass "
                                "--translations DIR with already fetched Translation-xx files")
    env = dict(os.environ, APT_CONFIG=str(config_path), LC_ALL="C")
    print(f"apt-get update with APT_CONFIG={config_path}", flush=True)
    result = subprocess.run([apt_get, "update"], env=env, capture_output=True, text=True, check=False)
    print(result.stdout[-2000:], end="", flush=True)
    if result.returncode != 0:
        raise RuntimeError(f"apt-get update failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}\n"
                           "check network access to the mirror (--mirror) and the suite name (--suite)")
    return config_path.parent / "lists"


def translation_language(path: Path) -> str | None:
    """Language code of an apt list file named ..._i18n_Translation-xx[.ext], else None."""
    match = _TRANSLATION_FILE.search(path.name)
    return unquote(match.group(1)) if match else None


def find_translation_files(lists_dir: Path, languages: tuple[str, ...] = LANGUAGES) -> dict[str, list[Path]]:
    """Translation files per wanted language, sorted by name so that merging is deterministic."""
    if not lists_dir.is_dir():
        raise FileNotFoundError(f"translations directory {lists_dir} does not exist; pass the folder that "
                                "holds the *_i18n_Translation-xx files (e.g. an apt lists directory)")
    found: dict[str, list[Path]] = {}
    for path in sorted(lists_dir.iterdir()):
        lang = translation_language(path)
        if lang in languages and path.is_file():
            found.setdefault(lang, []).append(path)
    if "en" not in found:
        raise FileNotFoundError(f"no Translation-en file under {lists_dir}: English is the join target; fetch "
                                "with this tool (drop --translations) or point --translations at apt's lists")
    return found


def release_dates(lists_dir: Path) -> dict[str, str]:
    """InRelease file name -> its Date field: which archive state the Translation files come from."""
    dates = {}
    for path in sorted(lists_dir.glob("*_InRelease")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("Date:"):
                dates[path.name] = line.partition(":")[2].strip()
                break
    return dates


def _decode_lz4(data: bytes) -> bytes:
    """lz4 frame decoding via the lz4 package, or the lz4 command where the package is missing."""
    try:
        import lz4.frame
    except ImportError:
        if shutil.which("lz4") is None:
            raise FileNotFoundError("an .lz4 Translation file needs the lz4 Python package "
                                    "(pip install lz4) or the lz4 command (apt-get install lz4)") from None
        return subprocess.run(["lz4", "-dc"], input=data, capture_output=True, check=True).stdout
    return lz4.frame.decompress(data)


def _decode_zstd(data: bytes) -> bytes:
    """zstd decoding via the zstd command (apt's zstd indexes are rare; no Python package is assumed)."""
    if shutil.which("zstd") is None:
        raise FileNotFoundError("a .zst Translation file needs the zstd command (apt-get install zstd)")
    return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout


def decompress(data: bytes) -> bytes:
    """Decode by magic bytes, so that a file's name suffix does not have to be trusted."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:4] == b"\x04\x22\x4d\x18":
        return _decode_lz4(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return _decode_zstd(data)
    return data


def read_translation(path: Path) -> str:
    """A Translation file's text; invalid UTF-8 bytes become lone surrogates, which the parser counts."""
    return decompress(path.read_bytes()).decode("utf-8", errors="surrogateescape")
