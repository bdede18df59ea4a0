"""The package stands alone and keeps one of each: no framework -> tools import, no sys.path edits, the
shipped files located explicitly, one position-offset function, one tracking config.

The import and sys.path checks read the source with `ast`, so a string or a comment that mentions them
does not count; a test that fails names the file and line.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from transformers import BertConfig, XLMRobertaConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
# Left for their owners (each entry names why); the tests fail once an entry is no longer needed, so that
# the list only shrinks.
PENDING_TOOLS_IMPORTS: set[tuple[str, str]] = set()
PENDING_SYS_PATH_EDITS: set[str] = set()


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO_ROOT / folder).rglob("*.py"))


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that call sys.path.insert/append/extend/remove or assign to sys.path."""
    def is_sys_path(node: ast.AST) -> bool:
        return (isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name)
                and node.value.id == "sys")
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_sys_path(node.func.value):
            lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            lines += [node.lineno for t in targets if is_sys_path(t)]
    return lines


def test_framework_never_imports_tools() -> None:
    offenders = set()
    for path in python_files("framework"):
        for module, line in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            if module == "tools" or module.startswith("tools."):
                offenders.add((str(path.relative_to(REPO_ROOT)), module))
                print(f"{path.relative_to(REPO_ROOT)}:{line} imports {module}")
    assert offenders <= PENDING_TOOLS_IMPORTS, offenders - PENDING_TOOLS_IMPORTS
    assert offenders == PENDING_TOOLS_IMPORTS, f"no longer needed, remove: {PENDING_TOOLS_IMPORTS - offenders}"


def test_nothing_edits_sys_path() -> None:
    edits = {}
    for path in python_files("framework", "tools", "bench", "tests"):
        lines = sys_path_edits(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            edits[str(path.relative_to(REPO_ROOT))] = lines
    assert set(edits) <= PENDING_SYS_PATH_EDITS, {k: v for k, v in edits.items() if k not in PENDING_SYS_PATH_EDITS}
    assert set(edits) == PENDING_SYS_PATH_EDITS, f"no longer needed, remove: {PENDING_SYS_PATH_EDITS - set(edits)}"


def test_the_ast_checks_catch_what_they_look_for() -> None:
    tree = ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path = []\nfrom tools.ddtp import export\n")
    assert sorted(sys_path_edits(tree)) == [2, 3]
    assert ("tools.ddtp", 4) in imported_modules(tree)


def test_shipped_files_are_located_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from framework import resources

    monkeypatch.chdir(tmp_path)  # nothing depends on the working directory
    assert resources.demo_config().is_file() and resources.text_sample().is_file()
    assert sorted(p.name for p in (resources.ddtp_dir() / "test").glob("*.jsonl.gz"))[:2] == ["cs-en.jsonl.gz",
                                                                                             "cs.jsonl.gz"]
    assert resources.deepspeed_config("ds_configs/zero2.json") == REPO_ROOT / "ds_configs" / "zero2.json"
    own = tmp_path / "mine.json"
    own.write_text("{}")
    assert resources.deepspeed_config(own) == own  # a user's file is taken as given
    with pytest.raises(FileNotFoundError, match="reinstall the package"):
        resources.shipped("configs/no-such.yaml")


def test_one_position_offset_function(tiny_model_dir: Path) -> None:
    from framework.model import load_m3
    from framework.model import positions
    from framework.pretrain import positions as pretrain_positions

    assert pretrain_positions.position_offset is positions.position_offset
    assert pretrain_positions.max_tokens is positions.max_tokens
    xlmr_xl = XLMRobertaConfig(max_position_embeddings=514, pad_token_id=1)
    xlmr_xl.model_type = "xlm-roberta-xl"  # missing from M3Model's own list before there was one list
    assert positions.max_tokens(xlmr_xl) == 512
    assert positions.max_tokens(BertConfig(max_position_embeddings=512)) == 512
    assert positions.max_tokens({"model_type": "camembert", "pad_token_id": 1, "max_position_embeddings": 514}) == 512
    with pytest.raises(ValueError, match="framework/model/positions.py"):
        positions.position_offset({"model_type": "llama"})
    model, _ = load_m3(tiny_model_dir)
    assert model.max_positions == positions.max_tokens(model.encoder.config) == 512


def test_one_tracking_config() -> None:
    from framework import tracking
    from framework.evaluate import TrackingConfig as EvalTracking
    from framework.train.config import TrackingConfig as TrainTracking

    assert EvalTracking is TrainTracking is tracking.TrackingConfig
    with pytest.raises(ValueError, match="tracking.log_every"):
        tracking.TrackingConfig(log_every=0)


SUFFIXED = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*_([A-Z][A-Zx]{0,4})")
LEGEND_LETTER = re.compile(r"(?:^|[,;:]|\s{2})\s*(?<![A-Za-z0-9_=])([A-Z])(?=\s+\S)", re.MULTILINE)


def shape_letters(tree: ast.AST) -> dict[str, str]:
    """Letter -> one name of the module that uses it as a shape suffix."""
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names |= {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    letters = {}
    for name in sorted(names):
        match = SUFFIXED.fullmatch(name)
        for letter in (match.group(1).replace("x", "") if match else ""):
            letters.setdefault(letter, name)
    return letters


def legend_letters(docstring: str) -> set[str]:
    start = docstring.find("Shape legend (docs/shapes.md):")
    return set(LEGEND_LETTER.findall(docstring[start + len("Shape legend (docs/shapes.md):"):])) if start >= 0 else set()


def repository_legend() -> tuple[set[str], dict[str, set[str]]]:
    """(letters with one meaning, letter -> files that give it a scoped meaning) from docs/shapes.md."""
    text = (REPO_ROOT / "docs" / "shapes.md").read_text(encoding="utf-8")
    one, scoped_part = text.split("## Scoped letters")
    rows = lambda part: [[c.strip() for c in line.strip("|").split("|")] for line in part.splitlines()
                         if re.match(r"\| [A-Z] \|", line)]
    scoped: dict[str, set[str]] = {}
    for letter, _meaning, where, *_ in rows(scoped_part):
        scoped.setdefault(letter, set()).update(f"framework/{p}" for p in re.findall(r"`([^`]+)`", where))
    return {row[0] for row in rows(one)}, scoped


def test_shape_letters_follow_the_repository_legend() -> None:
    everywhere, scoped = repository_legend()
    assert {"B", "L", "Q", "P", "C"} <= everywhere and "framework/evaluate/hybrid.py" in scoped["E"]
    problems = []
    for path in python_files("framework"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used, where = shape_letters(tree), str(path.relative_to(REPO_ROOT))
        legend = legend_letters(ast.get_docstring(tree) or "")
        problems += [f"{where}: {name} uses {letter}, not in its legend" for letter, name in used.items()
                     if letter not in legend]
        problems += [f"{where}: legend letter {letter} is not in docs/shapes.md (for this file)" for letter in legend
                     if letter not in everywhere and where not in scoped.get(letter, set())]
    assert not problems, "\n".join(problems)


def test_legend_parser_reads_both_layouts() -> None:
    assert legend_letters("Shape legend (docs/shapes.md): Q queries, P passages (= Q * G), G group size.") == \
        {"Q", "P", "G"}
    assert legend_letters("Shape legend (docs/shapes.md):\n    Q  queries        X  any columns\n") == {"Q", "X"}
    assert shape_letters(ast.parse("headers_WxH = scores_QP = num_tokens = 1")) == {"W": "headers_WxH",
                                                                                   "H": "headers_WxH",
                                                                                   "Q": "scores_QP",
                                                                                   "P": "scores_QP"}
