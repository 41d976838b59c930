"""Helpers of the robustness suite: run a subcommand in-process and build bad inputs on the spot.

Every case asserts that the command returns an exit code (no exception escapes), prints no
traceback, and loses or overwrites nothing it should keep.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def cli(capsys):
    """cli(*argv) -> (exit code, stdout, stderr) of `stablesr ARGV`, asserting no traceback was printed."""
    from stablesr.cli.main import main

    def run(*argv) -> tuple[int, str, str]:
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit_:  # argparse usage errors and explicit SystemExit("error: ...")
            code = exit_.code if isinstance(exit_.code, int) else 1
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "Traceback" not in out, err
        return code, out, err

    return run
