"""Reading a CSV file as a user gave it, and refusing values a model cannot learn from.

pandas reads ``inf`` (and ``1e999``) as infinity and ``nan`` as a missing value. An infinite
feature turns training into NaNs without an error, and a literal ``nan`` in a numeric column
is almost always a bug upstream, so both are refused with the column and line named. A blank
cell (or ``NA``, ``null``, ...) stays what it was: a missing value, filled from the train split.
In a text column, and in the target and time columns, ``nan`` still means missing.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
import pandas as pd

from edgeship.core.errors import DataError

# pandas' default missing-value markers without the NaN spellings, which are checked instead.
_NAN = frozenset({"nan", "+nan", "-nan"})
_NA_MARKERS = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN", "<NA>",
               "N/A", "NA", "NULL", "None", "n/a", "null"]
_NON_FINITE = _NAN | {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def read_table(path: Path) -> pd.DataFrame:
    """``path`` as a DataFrame (tab-separated for ``.tsv``); unreadable files are one DataError."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        return pd.read_csv(path, sep=sep, keep_default_na=False, na_values=_NA_MARKERS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        hint = "save it as UTF-8" if isinstance(e, UnicodeDecodeError) else "check the file"
        raise DataError(f"cannot read {path} as CSV ({reason}); {hint}") from e
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e}); check the path and its permissions") from e


def reject_non_finite(frame: pd.DataFrame, path: Path, lenient: Collection[str | None] = ()) -> pd.DataFrame:
    """``frame`` with ``nan`` text as missing where that is safe; infinities and NaN refused.

    A column counts as numeric when every value that is not a NaN/infinity spelling parses as
    a number. ``lenient`` columns (target, time) only get their ``nan`` turned into missing.
    """
    out = frame.copy()
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_bool_dtype(col):
            continue
        if pd.api.types.is_numeric_dtype(col):
            bad = pd.Series(np.isinf(col.to_numpy(float)), index=col.index)
        else:
            text = col.astype("string").str.strip().str.lower()
            flagged = text.isin(_NON_FINITE).fillna(False).astype(bool)
            nan_text = text.isin(_NAN).fillna(False).astype(bool)
            rest = pd.to_numeric(col.where(~flagged & col.notna()).dropna(), errors="coerce")
            if name in lenient or rest.isna().any():  # text: 'nan' is a missing value, as before
                out[name] = col.mask(nan_text)
                continue
            bad = flagged | pd.Series(np.isinf(rest.to_numpy(float)), index=rest.index).reindex(
                col.index, fill_value=False)
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path.name}: column '{name}' holds {int(bad.sum())} non-finite value(s) "
                f"({str(col.iloc[first]).strip()!r} on line {first + 2}); a model cannot learn "
                "from them: fix them, or leave the cells blank (a blank is a missing value, filled "
                "with the train median)"
            )
    return out
