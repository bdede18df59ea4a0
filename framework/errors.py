"""User errors at the command line: one line that says what to fix, exit status 2; the traceback with --verbose.

A user error is anything a user can fix from the message: a ValueError (bad config field or input, with
the field and the fix in its message), a missing file or folder, or an error type this project defines
(DataError, ShardError, NonFiniteLoss, ...). Anything else is a bug and keeps its traceback.

Under a launcher every rank usually fails the same way (the config is loaded on every rank before the
process group exists). Rank 0 prints at once; another rank waits RANK_SETTLE_S first, so that when rank 0
failed too the launcher has stopped the job before the copy is printed, and a failure of that rank alone
is still reported.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator

# argparse's status for a bad command line; sysexits' EX_USAGE is 64, but 2 is what users of CLIs expect.
USER_ERROR_EXIT = 2
RANK_SETTLE_S = 5.0
USER_ERROR_TYPES = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_user_error(error: BaseException) -> bool:
    """ValueError and its kin, or an exception class defined in this package."""
    if isinstance(error, USER_ERROR_TYPES):
        return True
    return any(cls.__module__.split(".")[0] == "framework" for cls in type(error).__mro__)


def report(name: str, error: BaseException, hint: str = "") -> None:
    """Print the error's one line once per job where possible (see the module docstring)."""
    rank = launched_rank()
    if rank:
        time.sleep(RANK_SETTLE_S)
    where = f"[rank {rank}] " if rank else ""
    print(f"{where}{name}: {error}{hint}", file=sys.stderr, flush=True)


def launched_rank() -> int:
    """This process's global rank as the launcher set it (0 when it set none or set it badly)."""
    from framework.parallel import detect_env

    try:
        return detect_env(os.environ).rank
    except ValueError:
        return 0


@contextlib.contextmanager
def exit_on_user_error(name: str, verbose: bool | None = None) -> Iterator[None]:
    """Around a command's body: a user error becomes `name: message` on stderr and SystemExit(2).

    `verbose` is the command's --verbose flag (True: the error propagates with its traceback); None for a
    command without one. Other exceptions always propagate.
    """
    try:
        yield
    except Exception as error:  # noqa: BLE001 - sorted into user errors and bugs right here
        if verbose or not is_user_error(error):
            raise
        report(name, error, hint="" if verbose is None else " (--verbose shows the traceback)")
        raise SystemExit(USER_ERROR_EXIT) from None


def run_tool(prog: str, doc: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             body: Callable[[argparse.Namespace], None], argv: list[str] | None = None) -> None:
    """The command line of a tools/ script: its options, the library's progress lines, one-line user errors."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # framework/starting logs its steps at INFO
    with exit_on_user_error(prog):
        body(args)
