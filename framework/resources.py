"""Files the package ships: the demo's config, the DDTP sample, the text sample, the DeepSpeed configs.

In a clone (or an editable install) they are read where they live in the repository (configs/, data/,
ds_configs/), so that editing them there takes effect. A wheel carries copies under framework/_shipped/
(setup.py's build step copies SHIPPED there), so that an installed `m3-framework demo` works from any
directory. Paths are relative to the repository root in both cases.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "_shipped"
REPO_ROOT = PACKAGE_DIR.parent
# What a wheel carries (repository-relative globs). setup.py reads this list (keep this module stdlib-only)
# and copies the files; MANIFEST.in puts the same files in an sdist.
SHIPPED = ("configs/demo.yaml", "configs/demo-e5-small.yaml", "ds_configs/*.json", "data/multilingual_sample.txt", "data/ddtp/**/*")


def shipped(relative: str) -> Path:
    """The shipped file or folder at `relative` (e.g. "configs/demo.yaml"), wheel copy first."""
    for root in (SHIPPED_DIR, REPO_ROOT):
        path = root / relative
        if path.exists():
            return path
    raise FileNotFoundError(f"{relative} is neither in the installed package ({SHIPPED_DIR}) nor in a repository "
                            f"checkout ({REPO_ROOT}); reinstall the package (pip install m3-framework, or "
                            "pip install -e . in a clone)")


def demo_config(start: str = "tiny") -> Path:
    """The demo's three-stage curriculum: configs/demo.yaml for the tiny random start, configs/demo-e5-small.yaml
    (the pretrained-start recipe's settings) for multilingual-e5-small."""
    return shipped("configs/demo-e5-small.yaml" if start == "e5-small" else "configs/demo.yaml")


def ddtp_dir() -> Path:
    """data/ddtp: the shipped DDTP sample (train/dev/test rows per direction)."""
    return shipped("data/ddtp")


def text_sample() -> Path:
    """data/multilingual_sample.txt: the multilingual text the test tokenizers are trained on."""
    return shipped("data/multilingual_sample.txt")


def deepspeed_config(path: str | Path) -> Path:
    """A DeepSpeed config path as given when it exists, else the shipped ds_configs/ file of that name.

    Lets a config that says `ds_configs/zero2.json` run from any directory with an installed package.
    """
    given = Path(path)
    if given.is_file() or given.is_absolute():
        return given
    return shipped(f"ds_configs/{given.name}") if given.parent == Path("ds_configs") else given
