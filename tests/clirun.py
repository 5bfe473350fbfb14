"""Driving the `mosaic` CLI in tests. Every test goes through `invoke_cli`, which fails the test
on an internal error (exit 70: a bug the CLI reported) and on any traceback, so a test that
expects a user error cannot pass because the code under it crashed."""
from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from mosaicdb_cli.common import EXIT_BUG
from mosaicdb_cli.main import cli


def invoke_cli(*args, code: int | None = None, **kw) -> Result:
    """Run `mosaic ARGS` in this process; `code`: the exit code the test expects."""
    res = CliRunner().invoke(cli, [str(a) for a in args], prog_name="mosaic", catch_exceptions=False, **kw)
    if res.exit_code == EXIT_BUG or "Traceback" in res.output:
        pytest.fail(f"mosaic {' '.join(map(str, args))}: internal error (exit {res.exit_code}):\n{res.output}")
    if code is not None:
        assert res.exit_code == code, f"exit {res.exit_code}, expected {code}: {res.output}"
    return res


def check_process(res, args) -> None:
    """The same check for a CLI run in a subprocess (a CompletedProcess)."""
    if res.returncode == EXIT_BUG or "Traceback" in (res.stdout or "") + (res.stderr or ""):
        pytest.fail(f"mosaic {' '.join(map(str, args))}: internal error (exit {res.returncode}):\n{res.stderr}")
