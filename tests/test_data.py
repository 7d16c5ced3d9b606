"""Datasets, splits and preprocessing: nothing fitted ever sees validation or test rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from edgeship.core.errors import DataError, InputError
from edgeship.training import preprocessing
from edgeship.training.datasets import load_dataset
from edgeship.training.splits import balanced_class_weight, split_dataset


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _mixed_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "when": pd.date_range("2023-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "x": rng.normal(10, 2, n),
        "color": rng.choice(["red", "green", "blue"], n),
        "notes": [f"free text {i}" for i in range(n)],
        "label": rng.choice(["a", "b"], n, p=[0.8, 0.2]),
    })
    frame.loc[[3, 50, 120], "x"] = np.nan
    frame.loc[[7, 60], "color"] = np.nan
    frame.loc[[11, 99], "label"] = np.nan
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.mark.parametrize(("name", "kind", "shape"), [
    ("digits", "image", (8, 8, 1)), ("iris", "tabular", (4,)),
    ("wine", "tabular", (13,)), ("breast_cancer", "tabular", (30,)),
])
def test_builtin_datasets_load_offline(name: str, kind: str, shape: tuple[int, ...]) -> None:
    data = load_dataset(name)
    assert data.kind == kind and len(data.sha256) == 64
    split = split_dataset(data, seed=0)
    spec = preprocessing.fit(data, split.train)
    x = preprocessing.transform(spec, data.select(split.test))
    assert x.shape[1:] == shape and x.dtype == np.float32


def test_digits_keep_their_0_to_16_scale_and_train_statistics() -> None:
    data = load_dataset("digits")
    assert data.images.max() == 16 and data.raw_range == (0.0, 16.0)
    split = split_dataset(data, seed=0)
    spec = preprocessing.fit(data, split.train)
    train_scaled = data.images[split.train] / 16.0
    assert spec["mean"][0] == pytest.approx(float(train_scaled.mean()), rel=1e-5)
    x_train = preprocessing.transform(spec, data.images[split.train])
    assert abs(float(x_train.mean())) < 1e-4 and float(x_train.std()) == pytest.approx(1, rel=1e-3)


def test_stratified_split_is_seeded_disjoint_and_balanced() -> None:
    data = load_dataset("wine")
    a, b = split_dataset(data, seed=3), split_dataset(data, seed=3)
    assert all(np.array_equal(getattr(a, p), getattr(b, p)) for p in ("train", "val", "test"))
    parts = [set(a.train), set(a.val), set(a.test)]
    assert sum(map(len, parts)) == data.rows and not (parts[0] & parts[1] or parts[0] & parts[2])
    overall = np.bincount(data.y) / data.rows
    test_share = np.bincount(data.y[a.test], minlength=3) / len(a.test)
    assert np.abs(overall - test_share).max() < 0.1
    assert split_dataset(data, seed=4).test.tolist() != a.test.tolist()


def test_csv_preprocessing_is_fitted_on_train_rows_only(tmp_path: Path) -> None:
    data = load_dataset(str(_csv(tmp_path, _mixed_frame())), target="label")
    assert data.dropped_rows == {"missing_target": 2} and data.rows == 198
    split = split_dataset(data, seed=0)
    spec = preprocessing.fit(data, split.train)
    cols = {c["name"]: c for c in spec["columns"]}
    train_x = data.frame["x"].iloc[split.train]
    assert cols["x"]["mean"] == pytest.approx(train_x.mean())
    assert cols["x"]["fill"] == pytest.approx(train_x.median())
    assert cols["color"]["vocabulary"] == sorted(data.frame["color"].iloc[split.train].dropna().unique())
    reasons = {d["name"]: d["reason"] for d in spec["dropped"]}
    assert reasons["notes"].startswith("free text") and "--time-column when" in reasons["when"]
    assert spec["features"] == ["x", "color=blue", "color=green", "color=red"]
    x = preprocessing.transform(spec, data.select(split.test))
    assert x.shape == (len(split.test), 4) and np.isfinite(x).all()


def test_unseen_category_and_missing_values_map_safely(tmp_path: Path) -> None:
    data = load_dataset(str(_csv(tmp_path, _mixed_frame())), target="label")
    split = split_dataset(data, seed=0)
    spec = preprocessing.fit(data, split.train)
    rows = pd.DataFrame({"x": [np.nan, 12.0], "color": ["purple", None], "notes": ["", ""]})
    x = preprocessing.transform(spec, rows)
    col = next(c for c in spec["columns"] if c["name"] == "x")
    assert x[0, 0] == pytest.approx((col["fill"] - col["mean"]) / col["std"])
    assert x[0, 1:].sum() == 0  # purple was never seen: all zeros
    fill = next(c for c in spec["columns"] if c["name"] == "color")["fill"]
    assert x[1, 1 + ["blue", "green", "red"].index(fill)] == 1


def test_free_text_column_is_dropped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = load_dataset(str(_csv(tmp_path, _mixed_frame())), target="label")
    preprocessing.fit(data, split_dataset(data, seed=0).train)
    assert "notes" in capsys.readouterr().err


def test_time_split_trains_on_the_oldest_rows(tmp_path: Path) -> None:
    data = load_dataset(str(_csv(tmp_path, _mixed_frame())), target="label", time_column="when")
    assert "when" not in data.frame.columns
    split = split_dataset(data, seed=0)
    t = data.time
    assert split.method == "time"
    assert t.iloc[split.train].max() < t.iloc[split.val].min()
    assert t.iloc[split.val].max() < t.iloc[split.test].min()


def test_numeric_time_column_works(tmp_path: Path) -> None:
    frame = _mixed_frame().drop(columns=["when"]).assign(step=lambda f: np.arange(len(f))[::-1])
    data = load_dataset(str(_csv(tmp_path, frame)), target="label", time_column="step")
    split = split_dataset(data, seed=0)
    assert data.time.iloc[split.train].max() < data.time.iloc[split.test].min()


def test_balanced_class_weight_matches_sklearn() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 90 + [1] * 10)
    ours = balanced_class_weight(y, 2)
    theirs = compute_class_weight("balanced", classes=np.array([0, 1]), y=y)
    assert [ours[0], ours[1]] == pytest.approx(theirs.tolist())
    assert ours[1] > ours[0]


def test_image_folder_loads_and_resizes(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(6):
            arr = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cats" / "broken.png").write_bytes(b"not an image")
    data = load_dataset(str(tmp_path), image_size=(16, 16))
    assert data.images.shape == (12, 16, 16, 3) and data.labels == ["cats", "dogs"]
    assert data.color_mode == "RGB" and data.dropped_rows == {"unreadable_images": 1}


@pytest.mark.parametrize(("kwargs", "error", "needle"), [
    ({"spec": "nope"}, InputError, "digits, breast_cancer, wine, iris"),
    ({"spec": "missing.csv", "target": "y"}, InputError, "no such file"),
])
def test_bad_dataset_names(kwargs: dict, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        load_dataset(**kwargs)


def test_csv_errors_name_the_problem(tmp_path: Path) -> None:
    path = _csv(tmp_path, _mixed_frame())
    with pytest.raises(DataError, match="its columns are: when, x, color, notes, label"):
        load_dataset(str(path), target="nope")
    single = _csv(tmp_path, _mixed_frame().assign(label="a"), "single.csv")
    with pytest.raises(DataError, match="single class"):
        load_dataset(str(single), target="label")
    tiny = _csv(tmp_path, _mixed_frame().head(6), "tiny.csv")
    with pytest.raises(DataError, match="fewer than the split needs"):
        split_dataset(load_dataset(str(tiny), target="label"), seed=0)
    with pytest.raises(DataError, match="does not parse as dates or numbers"):
        load_dataset(str(path), target="label", time_column="notes")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DataError, match="has no images"):
        load_dataset(str(tmp_path / "empty"))
