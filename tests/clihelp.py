"""Run the real ``edgeship`` CLI in-process, the way a user would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from edgeship.cli import cli


def invoke(runs_dir: Path, *args: str) -> Result:
    runner = CliRunner()
    return runner.invoke(cli, ["--runs-dir", str(runs_dir), *args], catch_exceptions=False)


def invoke_json(runs_dir: Path, *args: str) -> dict[str, Any]:
    result = invoke(runs_dir, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, *needles: str) -> str:
    """Exit code 2, one line on stderr starting with 'error:', naming what is wrong."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]
