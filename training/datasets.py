"""Datasets, all offline: scikit-learn's bundled ones, a CSV file, or an image folder.

A loader returns raw data (before any fitted preprocessing) plus what lineage needs: a
sha256 fingerprint of the raw bytes and where they came from. Fitting happens later, on the
train split only (``training.preprocessing``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeship.core.console import warn
from edgeship.core.errors import DataError, InputError
from edgeship.training.images import GREY_MODES, image_array, open_image
from edgeship.training.tables import read_table, reject_non_finite

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class RawDataset:
    """Raw features and integer labels, ready to be split."""

    name: str
    kind: str  # "image" or "tabular"
    source: str
    labels: list[str]
    y: np.ndarray
    images: np.ndarray | None = None  # image kind: float32 N x H x W x C, raw intensities
    frame: pd.DataFrame | None = None  # tabular kind: raw feature columns
    raw_range: tuple[float, float] = (0.0, 255.0)
    color_mode: str = "L"
    target: str | None = None
    time: pd.Series | None = None  # parsed --time-column, aligned with rows
    time_column: str | None = None
    sha256: str = ""
    dropped_rows: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.y)

    def select(self, idx: np.ndarray) -> Any:
        """Raw features of the given rows."""
        if self.kind == "image":
            return self.images[idx]
        return self.frame.iloc[idx].reset_index(drop=True)


def _sklearn(name: str) -> RawDataset:
    from sklearn import datasets as skd

    loader = getattr(skd, f"load_{name}")
    bunch = loader()
    x, y = bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    labels = [str(n) for n in getattr(bunch, "target_names", np.unique(y))]
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    source = f"sklearn.datasets.load_{name}"
    if name == "digits":
        # 8x8 images with 0-16 intensities (32x32 bitmaps counted in 4x4 blocks).
        return RawDataset(
            name=name, kind="image", source=source, labels=labels, y=y,
            images=x.reshape(-1, 8, 8, 1), raw_range=(0.0, 16.0), color_mode="L", sha256=digest,
        )
    frame = pd.DataFrame(x, columns=[str(c) for c in bunch.feature_names])
    return RawDataset(
        name=name, kind="tabular", source=source, labels=labels, y=y, frame=frame, sha256=digest,
    )


BUILTIN: dict[str, Callable[[], RawDataset]] = {
    "digits": lambda: _sklearn("digits"),
    "breast_cancer": lambda: _sklearn("breast_cancer"),
    "wine": lambda: _sklearn("wine"),
    "iris": lambda: _sklearn("iris"),
}


def load_dataset(
    spec: str,
    target: str | None = None,
    time_column: str | None = None,
    image_size: tuple[int, int] = (32, 32),
) -> RawDataset:
    """A built-in name, a ``.csv`` path (with ``target``) or an image folder."""
    if spec in BUILTIN:
        if target or time_column:
            raise InputError(
                f"--target and --time-column apply to CSV files, not the built-in '{spec}'"
            )
        return BUILTIN[spec]()
    path = Path(spec)
    if path.suffix.lower() in {".csv", ".tsv", ".txt"} or path.is_file():
        if not path.exists():
            raise InputError(f"no such file: {path}; check the path")
        if path.is_dir():
            raise InputError(f"{path} is a folder, not a {path.suffix} file: pass the file itself "
                             "(an image folder needs a name without a table suffix)")
        return load_csv(path, target=target, time_column=time_column)
    if path.is_dir():
        return load_image_folder(path, image_size=image_size)
    raise InputError(
        f"unknown dataset '{spec}': use one of {', '.join(BUILTIN)}, a .csv file "
        "(with --target) or an image folder (one sub-folder per class)"
    )


def load_csv(path: Path, target: str | None, time_column: str | None = None) -> RawDataset:
    if not target:
        raise InputError(f"{path.name} is a CSV file: name the label column with --target COLUMN")
    frame = read_table(path)
    if target not in frame.columns:
        raise DataError(
            f"{path.name} has no column '{target}'; its columns are: {', '.join(map(str, frame.columns))}"
        )
    if time_column and time_column not in frame.columns:
        raise DataError(
            f"{path.name} has no time column '{time_column}'; its columns are: "
            f"{', '.join(map(str, frame.columns))}"
        )
    if time_column == target:
        raise InputError("--time-column and --target name the same column; pick a time column")
    frame = reject_non_finite(frame, path, lenient={target, time_column})
    dropped: dict[str, int] = {}
    missing_target = frame[target].isna()
    if missing_target.any():
        dropped["missing_target"] = int(missing_target.sum())
        frame = frame.loc[~missing_target].reset_index(drop=True)
    time = None
    if time_column:
        time = parse_time_column(frame[time_column], time_column)
        missing_time = time.isna()
        if missing_time.any():
            dropped["missing_time"] = int(missing_time.sum())
            frame = frame.loc[~missing_time].reset_index(drop=True)
            time = time.loc[~missing_time].reset_index(drop=True)
    target_values = frame[target].astype(str)
    labels = sorted(target_values.unique().tolist(), key=_natural_key)
    if len(labels) < 2:
        only = labels[0] if labels else "nothing"
        raise DataError(
            f"target '{target}' has a single class ({only}) after dropping missing values; "
            "a classifier needs at least two"
        )
    index = {label: i for i, label in enumerate(labels)}
    y = target_values.map(index).to_numpy(np.int64)
    features = frame.drop(columns=[c for c in (target, time_column) if c])
    if features.shape[1] == 0:
        raise DataError(f"{path.name} has no feature columns besides '{target}'")
    return RawDataset(
        name=path.stem, kind="tabular", source=str(path.resolve()), labels=labels, y=y,
        frame=features.reset_index(drop=True), target=target, time=time, time_column=time_column,
        sha256=_sha256_path(path), dropped_rows=dropped,
    )


def parse_time_column(column: pd.Series, name: str) -> pd.Series:
    """Numbers stay numbers; anything else must parse as dates. Missing values become NaN/NaT."""
    present = column.dropna()
    if present.empty:
        raise DataError(f"time column '{name}' is empty; pick a column of dates or numbers")
    numeric = pd.to_numeric(present, errors="coerce")
    if numeric.notna().all():
        return pd.to_numeric(column, errors="coerce").astype(float)
    parsed = pd.to_datetime(column, errors="coerce", format="mixed")
    bad = column.notna() & parsed.isna()
    if bad.any():
        example = column[bad].iloc[0]
        raise DataError(
            f"time column '{name}' does not parse as dates or numbers (e.g. {example!r} in "
            f"{int(bad.sum())} rows); fix those values or choose another --time-column"
        )
    return parsed


def load_image_folder(root: Path, image_size: tuple[int, int]) -> RawDataset:
    """One sub-folder per class; unreadable files are skipped, counted and named on stderr, bombs
    refused."""
    from PIL import UnidentifiedImageError

    classes = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: _natural_key(p.name))
    files = [
        (cls.name, f) for cls in classes for f in sorted(cls.rglob("*"))
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(
            f"image folder {root} has no images; put them in one sub-folder per class "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    labels = sorted({c for c, _ in files}, key=_natural_key)
    if len(labels) < 2:
        raise DataError(
            f"image folder {root} has a single class ({labels[0]}); a classifier needs at least two "
            "sub-folders"
        )
    # First pass, headers only: refuse bombs and odd depths before decoding anything, and
    # learn the colour mode (greyscale only when every image is).
    readable, unreadable, grayscale = [], [], True
    for label, f in files:
        try:
            with open_image(f) as im:
                grayscale &= im.mode in GREY_MODES
        except (UnidentifiedImageError, OSError):
            unreadable.append(f)
            continue
        readable.append((label, f))
    mode = "L" if grayscale else "RGB"
    h, w = image_size
    arrays, ys, digest = [], [], hashlib.sha256()
    for label, f in readable:
        try:
            with open_image(f) as im:
                arrays.append(image_array(im, mode, (w, h)))
        except (UnidentifiedImageError, OSError):
            unreadable.append(f)
            continue
        ys.append(labels.index(label))
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    if not arrays:
        raise DataError(f"no image in {root} could be read; check the files")
    images = np.stack(arrays)
    if images.ndim == 3:
        images = images[..., None]
    if unreadable:
        _warn_unreadable(root, unreadable, len(files))
    dropped = {"unreadable_images": len(unreadable)} if unreadable else {}
    return RawDataset(
        name=root.name, kind="image", source=str(root.resolve()), labels=labels,
        y=np.asarray(ys, np.int64), images=images, raw_range=(0.0, 255.0), color_mode=mode,
        sha256=digest.hexdigest(), dropped_rows=dropped,
    )


def _warn_unreadable(root: Path, unreadable: list[Path], total: int, shown: int = 3) -> None:
    """One line on stderr: a skipped image changes the data, and the manifest alone is not read."""
    names = [str(f.relative_to(root)) for f in unreadable[:shown]]
    more = f" and {len(unreadable) - shown} more" if len(unreadable) > shown else ""
    warn(f"skipped {len(unreadable)} of {total} images in {root} that could not be read "
         f"({', '.join(names)}{more}); fix or remove them")


def _sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _natural_key(text: str) -> tuple[Any, ...]:
    """Sort '2' before '10', and numbers before words."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
