"""The errors a user can act on, and how a command line reports them.

A library error states the problem and what to do in terms of settings, written `{name}` in its
hint. Each command spells a setting as its own flag: the embedder's `{model}` is `--model`, the
evaluator's is `--encoder`. `str(error)` spells every setting as `--name`, as most commands do.
"""
from __future__ import annotations

import errno
import logging
import traceback


class _Flags(dict):
    def __missing__(self, name: str) -> str:
        return "--" + name.replace("_", "-")


class UserError(Exception):
    """A problem the user can fix: `problem`; `hint` says what to do, with settings as {name}."""

    def __init__(self, problem: str, hint: str = ""):
        super().__init__(problem, hint)
        self.problem, self.hint = problem, hint

    def message(self, flags: dict[str, str] | None = None) -> str:
        hint = self.hint.format_map(_Flags(flags or {}))
        return f"{self.problem}; {hint}" if hint else self.problem

    def __str__(self) -> str:
        return self.message()


def disk_full(e: BaseException | None) -> OSError | None:
    """The full disk (or exhausted quota) behind `e`, itself or an error that led to it; None where
    it is something else. Every file after it would fail the same way, so a command stops there."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def run_command(job, log: logging.Logger, interrupted: str, flags: dict[str, str] | None = None,
                errors: tuple[type[BaseException], ...] = ()) -> int:
    """`job()`'s exit status. A UserError (or one of `errors`) becomes one line and exit 2; a full
    disk one line and exit 1, and Ctrl-C one line and exit 130, both saying what was kept
    (`interrupted`). Anything else is a bug: it raises."""
    try:
        return job()
    except (UserError, *errors) as e:
        log.error("%s", e.message(flags) if isinstance(e, UserError) else e)
        log.debug("%s", traceback.format_exc())  # shown with --debug
        return 1 if disk_full(e) else 2
    except KeyboardInterrupt:
        log.error("interrupted: %s", interrupted)
        return 130
    except Exception as e:
        full = disk_full(e)
        if full is None:
            raise
        log.error("no space left on the disk%s; free space there, or write elsewhere; %s",
                  f" writing {full.filename}" if full.filename else "", interrupted)
        log.debug("%s", traceback.format_exc())
        return 1


def setup_logging(debug: bool = False) -> None:
    """One line per record on stderr: what every command prints besides its result."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(message)s")
