"""Packaging for the M3-Embedding training framework.

The wheel carries the files the demo and the shipped configs need (framework/resources.py's SHIPPED,
copied into framework/_shipped/ at build time), so that an installed package runs from any directory;
a clone reads them in place.
"""
import runpy
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# The one list, read from the module that locates the files (run as a file: the package need not import here).
SHIPPED = runpy.run_path(str(ROOT / "framework" / "resources.py"))["SHIPPED"]


class BuildWithResources(build_py):
    """build_py that also copies the shipped configs and data into framework/_shipped/ of the build."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the repository in place
            return
        target = Path(self.build_lib) / "framework" / "_shipped"
        for pattern in SHIPPED:
            for path in sorted(ROOT.glob(pattern)):
                if path.is_file():
                    destination = target / path.relative_to(ROOT)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, destination)


setup(
    name="m3-framework",
    version="0.1.0",
    description="Training framework for M3-Embedding: one XLM-RoBERTa encoder, dense/sparse/multi-vector "
    "heads, self-knowledge distillation, DeepSpeed, WebDataset, MLflow.",
    packages=find_packages(include=["framework", "framework.*"]),
    python_requires=">=3.10",
    install_requires=[
        # torch is pinned by the install command (pip install torch==2.13.0) so that a CPU machine
        # keeps its CPU build; any 2.x from 2.4 on works with the code.
        "torch>=2.4",
        "transformers>=4.44",
        "deepspeed>=0.15",
        "webdataset>=0.2.90",
        "sentencepiece>=0.2",
        "protobuf>=4",
        "safetensors>=0.4",
        "mlflow>=2.12",
        "faiss-cpu>=1.8",
        "bm25s>=0.3",
        "scipy>=1.10",
        # Retrieval metrics (nDCG, recall, MRR) through trec_eval's own code.
        "pytrec-eval-terrier>=0.5.6",
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.66",
        # Run lock (is a pid still the process that took it) and the device of a full disk; DeepSpeed
        # depends on it too.
        "psutil>=5.9",
    ],
    extras_require={
        # On GPU machines: pip install -e '.[gpu]' (faiss-gpu replaces the CPU index at search time).
        "gpu": ["faiss-gpu-cu12>=1.8"],
        # The tests load our exports in the reference implementation to prove compatibility.
        # FlagEmbedding 1.4.2 imports transformers.modeling_attn_mask_utils at package import, which
        # transformers 5.24 removed: the compatibility tests need a transformers it can import.
        # sentence-transformers loads our exports (their modules.json layout); matplotlib draws compare_runs --plot.
        "test": ["pytest>=8", "flagembedding>=1.3", "transformers<5.24", "sentence-transformers>=2.2",
                 "matplotlib>=3.5"],
    },
    entry_points={"console_scripts": ["m3-framework=framework.__main__:main"]},
    cmdclass={"build_py": BuildWithResources},
)
