"""User text (column, file, dataset and path names) prints verbatim: rich never reads it as markup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clihelp import invoke


def _bracketed_csv(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 120
    frame = pd.DataFrame({
        "[/]": [f"note {i}" for i in range(n)],  # free text: dropped, and named in a warning
        "weight [kg]": [None] * n,  # empty: dropped too
        "size [bold]": rng.normal(0, 1, n),  # the one feature kept
        "label": rng.choice(["a", "b"], n),
    })
    path = tmp_path / "shop [v2].csv"
    frame.to_csv(path, index=False)
    return path


def test_train_and_show_print_bracketed_names_verbatim(tmp_path: Path) -> None:
    runs = tmp_path / "runs [x]"
    result = invoke(runs, "train", "--dataset", str(_bracketed_csv(tmp_path)), "--target", "label",
                    "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert ("dropped columns the model cannot use: [/], weight [kg] (see the manifest for why)"
            in result.stderr)
    flat = " ".join(result.stdout.split())  # rich wraps long paths at spaces
    assert "on shop [v2] (test split" in flat and f"({runs}/" in flat
    shown = invoke(runs, "show", "latest")
    assert shown.exit_code == 0, shown.stderr
    flat = " ".join(shown.stdout.split())
    assert "data shop [v2] (tabular" in flat and f"({runs}/" in flat
    assert "[/] (free text" in flat and "weight [kg] (no values in the train split)" in flat
    listed = invoke(runs, "runs")
    assert listed.exit_code == 0 and "runs in " in listed.stdout and "[x]" in listed.stdout


def test_console_helpers_take_plain_text(capsys: pytest.CaptureFixture) -> None:
    from edgeship.core import console

    console.warn("column [/] and weight [kg] and :warning:")
    console.info("[bold]x[/] [/]")
    with console.progress("compress [/]", total=2) as bar:
        bar.update(status="[red]")
        bar.update(status="[/]")
    err = capsys.readouterr().err
    assert "warning: column [/] and weight [kg] and :warning:" in err
    assert "[bold]x[/] [/]" in err and "compress [/] 2/2 [/]" in err
    console.warn("[bold]marked[/] up", markup=True)
    assert "warning: marked up" in capsys.readouterr().err
