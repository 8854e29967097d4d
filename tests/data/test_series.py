"""Series loading: built-in statsmodels datasets, CSV files by column name or index, and every error."""

import sys

import numpy as np
import pytest

from seqlab.data.series import load_series, read_series
from seqlab.errors import DataError


def write(tmp_path, text, name="series.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def csv_path(tmp_path):
    return write(tmp_path, "date,a,b,c\n2020-01,1,10,100\n2020-02,2,20,200\n2020-03,3,30,300\n")


def test_csv_columns_by_name_index_and_several(csv_path):
    np.testing.assert_array_equal(load_series(csv_path, "b"), [[10], [20], [30]])
    np.testing.assert_array_equal(load_series(csv_path, 3), [[100], [200], [300]])
    np.testing.assert_array_equal(load_series(csv_path, "1"), [[1], [2], [3]])
    np.testing.assert_array_equal(load_series(csv_path, "a, c"), [[1, 100], [2, 200], [3, 300]])
    np.testing.assert_array_equal(load_series(csv_path, [2, "A"]), [[10, 1], [20, 2], [30, 3]])
    data = read_series(csv_path)  # default: every numeric column, the date skipped
    assert data.columns == ["a", "b", "c"] and data.values.shape == (3, 3) and data.season is None


def test_csv_without_header_names_columns_by_index(tmp_path):
    path = write(tmp_path, "1.5,2\n2.5,4\n3.5,8\n")
    data = read_series(path, column=1)
    assert data.columns == ["1"]
    np.testing.assert_array_equal(data.values[:, 0], [2, 4, 8])


def test_missing_values_interpolated_by_default_dropped_or_refused(tmp_path):
    path = write(tmp_path, "x,y\n,1\n1,2\n,3\nNA,4\n4,5\nnan,6\n")
    data = read_series(path, "x")  # leading/trailing gaps trimmed, interior gaps linear
    np.testing.assert_allclose(data.values[:, 0], [1, 2, 3, 4])
    assert data.notes == [
        "filled 2 missing values by linear interpolation and dropped 2 incomplete "
        "leading/trailing rows (x: 4)"
    ]
    np.testing.assert_array_equal(load_series(path, "x", nan="drop")[:, 0], [1, 4])
    with pytest.raises(DataError, match=r"has 4 missing values \(x: 4\).*interpolate.*drop"):
        load_series(path, "x", nan="error")


def test_missing_file_names_builtins(tmp_path):
    with pytest.raises(DataError, match=r"'nope.csv' is neither a built-in dataset \(sunspots, co2"):
        load_series(str(tmp_path / "nope.csv").replace(str(tmp_path) + "/", ""))


def test_missing_column_lists_the_columns(csv_path):
    with pytest.raises(DataError, match=r"has no column 'price'; its columns are: date, a, b, c"):
        load_series(csv_path, "price")
    with pytest.raises(DataError, match="has no column 7"):
        load_series(csv_path, 7)


def test_non_numeric_values_are_reported(tmp_path, csv_path):
    with pytest.raises(
        DataError, match=r"column 'date' .* 3 non-numeric values, the first '2020-01' in data row 1"
    ):
        load_series(csv_path, "date")
    path = write(tmp_path, "v\n1\n2\noops\n", "bad.csv")
    with pytest.raises(DataError, match="no all-numeric column"):
        load_series(path)


def test_too_short_and_empty(tmp_path):
    with pytest.raises(DataError, match="1 usable row; a series needs at least 2"):
        load_series(write(tmp_path, "v\n1\n", "one.csv"))
    with pytest.raises(DataError, match="is empty"):
        load_series(write(tmp_path, "\n\n", "empty.csv"))
    with pytest.raises(DataError, match="nan='zero' is not one of"):
        load_series(write(tmp_path, "v\n1\n2\n", "ok.csv"), nan="zero")


def test_builtin_without_statsmodels_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsmodels.datasets.nile", None)  # import -> ImportError
    with pytest.raises(DataError, match=r"pip install 'seqlab\[forecast\]'"):
        load_series("nile")


def test_builtin_datasets():
    pytest.importorskip("statsmodels")
    sunspots = read_series("sunspots")
    assert sunspots.values.shape == (309, 1) and sunspots.season == 11
    assert sunspots.values[0, 0] == 5.0  # 1700
    assert load_series("sunspots", "year")[-1, 0] == 2008  # case-insensitive column name
    co2 = read_series("co2")  # 59 missing weeks filled linearly
    assert co2.values.shape == (2284, 1) and not np.isnan(co2.values).any() and co2.season == 52
    assert "filled 59 missing values" in co2.notes[0]
    assert load_series("co2", nan="drop").shape == (2284 - 59, 1)
    with pytest.raises(DataError, match="59 missing values"):
        load_series("co2", nan="error")
    assert load_series("elnino").shape == (61 * 12, 1)
    assert load_series("macrodata", "realgdp,unemp").shape == (203, 2)
