"""How a ``transferd`` command ends: the named exit codes and the errors that map to them.

``run_command`` runs one parsed command and turns what it raised into a
one-line message on stderr and an exit code; the commands themselves only
raise (``UsageError``, ``transferd.client.ClientError``) or return a code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from transferd.client import ClientError, Unreachable

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "UsageError",
    "run_command",
]

EXIT_OK = 0  # done; for watch: the job FINISHED
EXIT_FAILURE = 1  # anything else that went wrong
EXIT_USAGE = 2  # bad command line, bad manifest, missing setting, request rejected as invalid
EXIT_JOB_FAILED = 3  # watch: the job ended FINISHEDDIRTY, FAILED, CANCELED or EXPIRED
EXIT_UNREACHABLE = 4  # no answer from the node
EXIT_AUTH = 5  # the node refused the credential (401) or the action (403)
EXIT_NOT_FOUND = 6  # no such job (or not visible to this tenant)
EXIT_INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """A problem with what the user typed or gave us; exits with EXIT_USAGE."""


def _exit_code(err: ClientError) -> int:
    """The exit code for an error answer (or no answer) from the node."""
    if isinstance(err, Unreachable):
        return EXIT_UNREACHABLE
    if err.status in (401, 403):
        return EXIT_AUTH
    if err.status == 404:
        return EXIT_NOT_FOUND
    if err.status in (400, 409, 413, 422):
        return EXIT_USAGE
    return EXIT_FAILURE


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command; what it raises becomes a message on stderr and an exit code."""
    try:
        code: int = func(args)
        return code
    except UsageError as err:
        return _fail(str(err), EXIT_USAGE)
    except Unreachable as err:
        return _fail(str(err), EXIT_UNREACHABLE)
    except ClientError as err:
        return _fail(f"{err} (HTTP {err.status}).", _exit_code(err))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # `transferd files JOB | head`: the reader went away; say nothing.
        _silence_stdout()
        return EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"transferd: {message}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
