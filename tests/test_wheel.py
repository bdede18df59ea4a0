"""The package stands alone: a wheel built from the repository's files, installed into a fresh venv, runs
`m3-framework --help` and `m3-framework evaluate` from a directory outside the repository.

The venv does not reinstall torch & co.: a .pth file appends this interpreter's site-packages to its path.
Python reads .pth files only in site directories, so the editable install in there (a .pth + finder of
its own) stays inactive and `framework` can only come from the wheel; PYTHONPATH is removed for the same
reason. pip runs --no-index (nothing is downloaded) and --no-build-isolation (setuptools from this venv).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def repository_files() -> list[str]:
    """Tracked files plus new ones git does not ignore: what a clone of this branch holds."""
    done = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=True)
    return [name for name in done.stdout.splitlines() if (REPO_ROOT / name).is_file()]


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, cwd=cwd, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv with only the wheel installed into it."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the repository's files for the wheel build")
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for name in repository_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(work / "dist"), str(source)], cwd=work)
    (wheel,) = (work / "dist").glob("m3_framework-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work)
    (Path(purelib.stdout.strip()) / "m3-shared-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(wheel)], cwd=work)
    return venv / "bin"


def test_installed_package_comes_from_the_wheel_with_its_data(installed: Path, tmp_path: Path) -> None:
    code = ("import framework, framework.resources as r; print(framework.__file__); "
            "print(r.demo_config()); print(r.deepspeed_config('ds_configs/zero2.json')); print(r.ddtp_dir())")
    lines = run([str(installed / "python"), "-c", code], cwd=tmp_path).stdout.splitlines()
    site = installed.parent / "lib"
    assert all(Path(line).is_relative_to(site) for line in lines), lines
    assert "_shipped" in lines[1] and Path(lines[2]).is_file() and (Path(lines[3]) / "test" / "de.jsonl.gz").is_file()
    # tools/ stays in the repository: the package needs none of it.
    assert run([str(installed / "python"), "-c", "import importlib.util as u; print(u.find_spec('tools'))"],
               cwd=tmp_path).stdout.strip() == "None"


def test_help_and_evaluate_from_outside_the_repository(installed: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    help_text = run([str(installed / "m3-framework"), "--help"], cwd=tmp_path).stdout
    assert "demo" in help_text and "train" in help_text and "evaluate" in help_text
    out = tmp_path / "results.json"
    done = run([str(installed / "m3-framework"), "evaluate", "--model", str(tiny_model_dir), "--benchmark", "ddtp",
                "--tasks", "de,de-en", "--max-queries", "5", "--max-corpus", "20", "--no-progress", "--no-mlflow",
                "--out", str(out)], cwd=tmp_path)
    results = json.loads(out.read_text(encoding="utf-8"))
    assert set(results["tasks"]) == {"de", "de-en"} and results["tasks"]["de"]["queries"] == 5
    assert "avg cross-lingual" in done.stdout
    # Quiet by default: neither transformers' load report nor progress bars reach the output.
    assert "LOAD REPORT" not in done.stdout + done.stderr and "Loading weights" not in done.stderr
