"""The errors a user can act on, and how a command line reports them.

A library error states the problem and what to do in terms of settings, written `{name}` in its
hint. Each command spells a setting as its own flag: the embedder's `{model}` is `--model`, the
evaluator's is `--encoder`. `str(error)` spells every setting as `--name`, as most commands do.
"""
from __future__ import annotations

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


def run_command(job, log: logging.Logger, interrupted: str, flags: dict[str, str] | None = None,
                errors: tuple[type[BaseException], ...] = ()) -> int:
    """`job()`'s exit status; a UserError (or one of `errors`) becomes one line and exit 2, Ctrl-C
    one line saying what was kept (`interrupted`) and exit 130. Anything else is a bug: it raises."""
    try:
        return job()
    except (UserError, *errors) as e:
        log.error("%s", e.message(flags) if isinstance(e, UserError) else e)
        log.debug("%s", traceback.format_exc())  # shown with --debug
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: %s", interrupted)
        return 130


def setup_logging(debug: bool = False) -> None:
    """One line per record on stderr: what every command prints besides its result."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(message)s")
