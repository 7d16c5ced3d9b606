"""The loaders' edge cases that are not errors: blanks and text 'nan' are missing values,
16-bit greyscale is scaled to 0-255 (in training and on the device alike), not clipped.
The inputs they refuse are in tests/test_bad_inputs.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeship.core.errors import DataError


def _table(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("a,b,tier,y\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def _rows(n: int = 40) -> list[list[str]]:
    return [[f"{i % 7}.5", str(i % 5), "xy"[i % 2], "pq"[i % 3 % 2]] for i in range(n)]


def test_blank_and_text_nan_are_missing_values(tmp_path: Path) -> None:
    """A blank numeric cell is imputed later; 'nan' in a text column or the target is missing."""
    from edgeship.training.datasets import load_csv

    rows = _rows()
    rows[2][0] = ""
    rows[4][2] = "nan"
    rows[6][3] = "NaN"
    data = load_csv(_table(tmp_path / "gaps.csv", rows), target="y")
    assert data.dropped_rows == {"missing_target": 1}
    assert data.frame["a"].isna().sum() == 1 and data.frame["tier"].isna().sum() == 1
    assert set(data.labels) == {"p", "q"}


@pytest.mark.parametrize("value", ["inf", "-Infinity", "nan", "1e999"])
def test_non_finite_numbers_are_refused_with_the_line(tmp_path: Path, value: str) -> None:
    from edgeship.training.datasets import load_csv

    rows = _rows()
    rows[9][1] = value
    with pytest.raises(DataError, match=r"column 'b' holds 1 non-finite value\(s\) .* on line 11"):
        load_csv(_table(tmp_path / "t.csv", rows), target="y")


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    """65535 is white and 32768 mid-grey, in training and on the device alike."""
    from PIL import Image

    from edge_runtime.cli import read_image
    from edgeship.training.datasets import load_image_folder

    levels = {"dark": 1000, "mid": 32768, "white": 65535}
    for name, level in levels.items():
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8), level, np.uint16)).save(tmp_path / name / f"{i}.png")
    assert Image.open(tmp_path / "mid/0.png").mode.startswith("I;16")
    data = load_image_folder(tmp_path, (4, 4))
    assert data.color_mode == "L"
    by_label = {label: data.images[data.y == k] for k, label in enumerate(data.labels)}
    for name, level in levels.items():
        np.testing.assert_allclose(by_label[name], level * 255 / 65535, rtol=1e-5)
    spec = {"channels": 1, "height": 4, "width": 4, "raw_range": [0, 255]}
    np.testing.assert_allclose(read_image(tmp_path / "mid/0.png", spec), 32768 * 255 / 65535, rtol=1e-5)


def test_16_bit_beside_colour_images_becomes_rgb_grey(tmp_path: Path) -> None:
    """A folder with colour images is RGB; a 16-bit grey image in it is scaled, then made RGB."""
    from PIL import Image

    from edgeship.training.datasets import load_image_folder

    (tmp_path / "grey").mkdir()
    (tmp_path / "colour").mkdir()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "grey/0.png")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "colour/0.png")
    data = load_image_folder(tmp_path, (4, 4))
    assert data.color_mode == "RGB" and data.images.shape == (2, 4, 4, 3)
    grey = data.images[data.labels.index("grey") == data.y][0]
    np.testing.assert_allclose(grey, 255.0)


def test_unreadable_images_are_counted_and_named_on_stderr(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Skipped files change the data: one warning line with the count and the first few names."""
    from PIL import Image

    from edgeship.training.datasets import load_image_folder

    root = tmp_path / "photos"
    for name in ("cats", "dogs"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (16, 16), 40 * i).save(root / name / f"ok{i}.png")
    for i in range(4):  # not images at all: refused when the header is read
        (root / "cats" / f"broken{i}.png").write_bytes(b"not an image")
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)
    Image.fromarray(noisy).save(root / "dogs" / "whole.png")
    (root / "dogs" / "truncated.png").write_bytes((root / "dogs" / "whole.png").read_bytes()[:200])
    (root / "dogs" / "whole.png").unlink()  # a header that reads, pixels that do not

    data = load_image_folder(root, (8, 8))
    assert data.rows == 6 and data.dropped_rows == {"unreadable_images": 5}
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"warning: skipped 5 of 11 images in {root} that could not be read")
    assert "cats/broken0.png, cats/broken1.png, cats/broken2.png and 2 more" in lines[0]

    for f in [*root.glob("*/broken*"), *root.glob("*/truncated*")]:
        f.unlink()
    load_image_folder(root, (8, 8))
    assert capsys.readouterr().err == ""  # a clean folder loads silently


def test_the_table_reader_keeps_other_missing_markers(tmp_path: Path) -> None:
    from edgeship.training.tables import read_table

    (tmp_path / "m.csv").write_text("a,b\nNA,1\nnull,2\n,3\n4,N/A\n")
    frame = read_table(tmp_path / "m.csv")
    assert frame["a"].isna().sum() == 3 and frame["b"].isna().sum() == 1
    assert isinstance(frame, pd.DataFrame)
