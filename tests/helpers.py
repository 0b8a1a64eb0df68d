"""What several test files share: the command line run in this process."""

import contextlib
import io
import os
import warnings
from types import SimpleNamespace


def run_cli(argv: list[str], cwd, check: bool = True) -> SimpleNamespace:
    """``pyrovae ARGV`` through :func:`pyrovae.run.cli.main` in this process, from the folder
    ``cwd``: its exit code, stdout, stderr, and the warnings it gave (``warned``, one a line)."""
    from pyrovae.run import cli

    out, err, old = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(record=True) as said,
        ):
            warnings.simplefilter("always")
            code = cli.main(argv)
    finally:
        os.chdir(old)
    warned = "".join(f"{w.message}\n" for w in said)
    result = SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue(), warned=warned)
    if check and code != 0:
        raise AssertionError(f"pyrovae {' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}\n{warned}")
    return result
