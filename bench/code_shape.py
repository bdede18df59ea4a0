"""Shape of the package at two commits: lines per module and the longest function (issue figures).

    python -m bench.code_shape [--before REV] [--after REV] [--paths framework/train framework/data ...]

For every .py file under the paths at either commit it prints the line count before and after, and the
longest function or method (by lines, decorators excluded) of each side. Files only on one side show `-`
on the other. Read from git objects, so the working tree is not touched.
"""

from __future__ import annotations

import argparse
import ast
import subprocess


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def _files(rev: str, paths: list[str]) -> dict[str, str]:
    names = _git("ls-tree", "-r", "--name-only", rev, "--", *paths).split()
    return {n: _git("show", f"{rev}:{n}") for n in names if n.endswith(".py")}


def longest_function(source: str) -> tuple[str, int]:
    """(name, lines) of the longest def in `source`; ("-", 0) without one."""
    best = ("-", 0)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > best[1]:
                best = (node.name, lines)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--after", default="HEAD", help="the later commit")
    parser.add_argument("--paths", nargs="+", default=["framework"], help="folders or files to compare")
    args = parser.parse_args()
    before, after = _files(args.before, args.paths), _files(args.after, args.paths)
    print(f"{'module':52s} {'lines':>11s}  longest function before -> after")
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        if b == a:
            continue
        lb = str(len(b.splitlines())) if b is not None else "-"
        la = str(len(a.splitlines())) if a is not None else "-"
        fb = "%s %d" % longest_function(b) if b is not None else "-"
        fa = "%s %d" % longest_function(a) if a is not None else "-"
        print(f"{name:52s} {lb:>5s}->{la:<5s}  {fb} -> {fa}")
    worst = max((longest_function(src) + (n,) for n, src in after.items()), key=lambda t: t[1])
    print(f"longest function at {args.after}: {worst[2]}:{worst[0]} ({worst[1]} lines); "
          f"modules: {len(before)} -> {len(after)}, over 300 lines after: "
          f"{sum(len(s.splitlines()) > 300 for s in after.values())}")


if __name__ == "__main__":
    main()
