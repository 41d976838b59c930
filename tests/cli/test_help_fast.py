"""`--help` of `stablesr` and of every subcommand builds its parser without importing torch (or numpy)."""

import os
import subprocess
import sys
from pathlib import Path

import stablesr

PROBE = """
import sys
from stablesr.cli.main import build_parser
parser, modules = build_parser()
for argv in {argvs!r}:
    try:
        parser.parse_args(argv)
    except SystemExit:
        pass
print(sorted(name for name in ("torch", "numpy", "diffusers", "PIL") if name in sys.modules))
"""


def _help_argvs() -> list[list[str]]:
    from stablesr.cli.bench import TARGETS
    from stablesr.cli.main import COMMANDS

    argvs = [["--help"]] + [[name, "--help"] for name in COMMANDS]
    return argvs + [["bench", target, "--help"] for target in TARGETS]


def test_every_help_builds_without_heavy_imports():
    argvs = _help_argvs()
    env = {**os.environ, "PYTHONPATH": str(Path(stablesr.__file__).parents[1])}  # this checkout's package
    result = subprocess.run([sys.executable, "-c", PROBE.format(argvs=argvs)], capture_output=True, text=True,
                            check=True, env=env)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert result.stdout.count("usage: stablesr") == len(argvs)
