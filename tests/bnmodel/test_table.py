"""bnmodel/table.py: every format, delimiter detection, compression, in-memory sources, the cell
rules, and errors that name the file, column, row and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bnmodel import table
from bnmodel.contract import ModelContract

TEXT = 'a,color,b\n1.5,red,2\n, blue ,NA\n3,"red, or so",4\n'


def _read(source, numeric=("a", "b"), categorical=("color",), **kw) -> table.Chunk:
    chunks = list(table.iter_chunks(source, numeric, categorical, allow_missing=True, **kw))
    assert len(chunks) == 1
    return chunks[0]


def _same(chunk: table.Chunk) -> None:
    np.testing.assert_array_equal(chunk.features, [[1.5, 2], [np.nan, np.nan], [3, 4]])
    assert chunk.categories[:, 0].tolist() == ["red", "blue", "red, or so"]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt"])
def test_delimiters_are_detected_whatever_the_suffix(tmp_path, delimiter, suffix):
    text = TEXT.replace(",", delimiter).replace(f'"red{delimiter} or so"', '"red, or so"')
    path = tmp_path / f"rows{suffix}"
    path.write_text(text, encoding="utf-8")
    assert table.csv_layout(path).delimiter == delimiter
    _same(_read(path))


def test_a_semicolon_file_with_decimal_commas_is_read_as_semicolons(tmp_path):
    path = tmp_path / "eu.csv"
    path.write_text("price;speed\n1,5;2\n3,25;4\n")
    assert table.csv_layout(path).delimiter == ";"
    with pytest.raises(table.TableError, match=r"column 'price', row 1 \(line 2\): '1,5'"):
        list(table.iter_chunks(path, ["price", "speed"]))


@pytest.mark.parametrize(("suffix", "compress"), [(".csv.gz", gzip.compress), (".tsv.zst", None)])
def test_compressed_text_is_read_as_the_plain_file(tmp_path, suffix, compress):
    text = TEXT.encode() if suffix.startswith(".csv") else TEXT.replace(",", "\t").encode()
    text = text.replace(b"red\t or so", b"red, or so")
    path = tmp_path / f"rows{suffix}"
    if compress is None:
        with pa.CompressedOutputStream(str(path), "zstd") as out:
            out.write(text)
    else:
        path.write_bytes(compress(text))
    assert table.file_format(path).compression in ("gzip", "zstd")
    _same(_read(path))


def test_parquet_npz_npy_and_in_memory_sources(tmp_path):
    frame = pd.DataFrame(
        {"a": [1.5, None, 3.0], "color": ["red", " blue", "red, or so"], "b": [2, None, 4]}
    )
    frame.to_parquet(tmp_path / "rows.parquet")
    _same(_read(tmp_path / "rows.parquet"))
    _same(_read(frame))
    _same(_read(pa.Table.from_pandas(frame)))
    x = frame[["a", "b"]].to_numpy(np.float32)
    np.save(tmp_path / "rows.npy", x)
    np.savez(tmp_path / "rows.npz", X=x, y=np.array([0, 1, 0]))
    for source in (tmp_path / "rows.npy", tmp_path / "rows.npz", x):
        chunk = _read(source, categorical=())
        np.testing.assert_array_equal(chunk.features, x)
    chunk = next(
        table.iter_chunks(tmp_path / "rows.npz", ["a", "b"], target="y", allow_missing=True)
    )
    assert chunk.targets.tolist() == [0, 1, 0]


def test_a_dataframe_of_mixed_objects_reads_as_text():
    frame = pd.DataFrame({"a": [1.0, 2.0], "flag": [True, " yes"]})
    chunk = _read(frame, numeric=("a",), categorical=("flag",))
    assert chunk.categories[:, 0].tolist() == ["True", "yes"]


def test_every_missing_token_padded_or_not_is_missing(tmp_path):
    tokens = sorted(table.MISSING_TOKENS - {""})
    lines = ["a,color"] + [f"{t},{t}" for t in tokens] + [f"  {t} , {t} " for t in tokens]
    path = tmp_path / "na.csv"
    path.write_text("\n".join(lines) + "\n")
    chunk = _read(path, numeric=("a",))
    assert np.isnan(chunk.features).all()
    assert set(chunk.categories[:, 0]) == {""}  # the "other" slot, as a blank cell


def test_bool_spellings_unicode_and_quotes_in_categorical_text(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text(
        'x,c\n1,true\n2, TRUE\n3,False \n4,"ja, nein"\n5, grün \n6,日本\n7,007\n', encoding="utf-8"
    )
    chunk = _read(path, numeric=("x",), categorical=("c",))
    assert chunk.categories[:, 0].tolist() == [
        "True",
        "True",
        "False",
        "ja, nein",
        "grün",
        "日本",
        "007",
    ]
    typed = pa.table({"x": [1.0, 2.0], "c": [True, False]})
    assert _read(typed, numeric=("x",), categorical=("c",)).categories[:, 0].tolist() == [
        "True",
        "False",
    ]


def test_a_headerless_numeric_file_fills_the_models_columns_in_order(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("1,2\n3,NA\n")
    assert table.csv_layout(path).header is None
    chunk = _read(path, categorical=())
    np.testing.assert_array_equal(chunk.features, [[1, 2], [3, np.nan]])
    with pytest.raises(table.TableError, match=r"2 columns, the model expects 3 \(a, b, c\)"):
        list(table.iter_chunks(path, ["a", "b", "c"]))
    path.write_text("1,2\n3,oops\n")
    with pytest.raises(table.TableError, match=r"column 'b', row 2 \(line 2\): 'oops'"):
        list(table.iter_chunks(path, ["a", "b"]))


def test_a_header_of_numbers_that_names_the_columns_is_a_header(tmp_path):
    path = tmp_path / "years.csv"
    path.write_text("2019,2020\n1,2\n3,4\n")
    chunk = _read(path, numeric=("2020", "2019"), categorical=())
    np.testing.assert_array_equal(chunk.features, [[2, 1], [4, 3]])
    assert table.load_table(path).column_names == ["2019", "2020"]


def test_chunks_are_exact_and_count_their_rows_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "CSV_BLOCK_BYTES", 64)  # many small pyarrow blocks
    n = 1000
    path = tmp_path / "many.csv"
    path.write_text("a,b\n" + "".join(f"{i},{-i}\n" for i in range(n)))
    chunks = list(table.iter_chunks(path, ["a", "b"], chunk_rows=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert [c.first_row for c in chunks] == [0, 300, 600, 900]
    np.testing.assert_array_equal(np.concatenate([c.features for c in chunks])[:, 0], np.arange(n))
    path.write_text("a,b\n" + "".join(f"{i},{-i}\n" for i in range(n - 1)) + "x,1\n")
    with pytest.raises(table.TableError, match=rf"column 'a', row {n} \(line {n + 1}\): 'x'"):
        list(table.iter_chunks(path, ["a", "b"], chunk_rows=300))


def test_a_padded_token_late_in_the_file_reads_every_row_once(tmp_path, monkeypatch):
    """pyarrow parses numbers first; a cell it cannot parse sends the rest to the text rules."""
    monkeypatch.setattr(table, "CSV_BLOCK_BYTES", 64)
    lines = [f"{i},{i % 3}" for i in range(500)]
    lines[400] = "400,  NA "  # pyarrow's own parser fails here, the cell rules do not
    path = tmp_path / "late.csv"
    path.write_text("a,b\n" + "\n".join(lines) + "\n")
    chunks = list(table.iter_chunks(path, ["a", "b"], chunk_rows=128, allow_missing=True))
    x = np.concatenate([c.features for c in chunks])
    np.testing.assert_array_equal(x[:, 0], np.arange(500))
    assert np.isnan(x[400, 1]) and np.isnan(x[:, 1]).sum() == 1
    assert [c.first_row for c in chunks] == [0, 128, 256, 384]


@pytest.mark.parametrize(
    ("text", "kwargs", "pattern"),
    [
        ("a,b\n1,2\n3\n", {}, r"row 2 \(line 3\) has 1 cells, the header 2"),
        ("a,b\n1,2\n,4\n", {"allow_missing": False}, r"column 'a', row 2 \(line 3\): value is"),
        ("a,b\n1,inf\n", {}, r"column 'b', row 1 \(line 2\): inf is not a finite number"),
        ("a,c\n1,2\n", {}, r"rows.csv: column\(s\) \['b'\] missing; needed: \['a', 'b'\]"),
        ("", {}, r"rows.csv is empty \(no header row\)"),
    ],
)
def test_errors_name_the_file_column_row_and_line(tmp_path, text, kwargs, pattern):
    path = tmp_path / "rows.csv"
    path.write_text(text)
    with pytest.raises(table.TableError, match=pattern) as info:
        list(table.iter_chunks(path, ["a", "b"], **kwargs))
    assert str(path) in str(info.value)


def test_unreadable_sources_say_what_was_expected(tmp_path):
    with pytest.raises(table.TableError, match=r"unknown format '.xlsx'"):
        table.file_format(tmp_path / "rows.xlsx")
    (tmp_path / "bad.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(table.TableError, match=r"bad.csv.gz cannot be read"):
        list(table.iter_chunks(tmp_path / "bad.csv.gz", ["a"]))
    with pytest.raises(table.TableError, match="does not exist"):
        list(table.iter_chunks(tmp_path / "none.csv", ["a"]))
    with pytest.raises(table.TableError, match="cannot read a dict"):
        list(table.iter_chunks({"a": [1]}, ["a"]))
    with pytest.raises(table.TableError, match=r"array is \(2, 3\), the model needs \(N, 2\)"):
        list(table.iter_chunks(np.zeros((2, 3)), ["a", "b"]))


def test_chunk_inputs_follow_the_contract():
    chunk = table.Chunk(np.ones((2, 1), np.float32), np.array([["x", "y"], ["z", ""]], object))
    contract = ModelContract("classification", ("a",), ("c", "d"), ("0", "1"))
    feed = chunk.inputs(contract)
    assert list(feed) == ["features", "c", "d"] and feed["d"].shape == (2, 1)
    assert feed["d"][:, 0].tolist() == ["y", ""]
    only_text = chunk.inputs(ModelContract("classification", (), ("c", "d"), ("0", "1")))
    assert list(only_text) == ["c", "d"]


def test_load_table_infers_types_from_trimmed_text_and_keeps_the_text(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("n\tf\tb\ts\tcode\n 1 \t1.5\tTrue\tx\t007\n2\tNA\tfalse\t y \t010\n")
    loaded = table.load_table(path)
    types = {f.name: str(f.type) for f in loaded.typed().schema}
    assert types == {"n": "int64", "f": "double", "b": "bool", "s": "string", "code": "int64"}
    assert loaded.category_text("code").tolist() == ["007", "010"]  # as written
    assert loaded.category_text("s").tolist() == ["x", "y"]
    assert loaded.row(1) == "row 2 (line 3)"
    frame = pd.DataFrame({"a": [1, 2]})
    assert table.load_table(frame).typed().column_names == ["a"]


def test_parquet_tables_load_with_their_own_types(tmp_path):
    pq.write_table(pa.table({"a": [1, 2], "s": ["x", None]}), tmp_path / "t.parquet")
    loaded = table.load_table(tmp_path / "t.parquet")
    assert loaded.typed().schema.field("a").type == pa.int64()
    assert loaded.category_text("s").tolist() == ["x", ""]


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (3.0, "3"), ("3", "3"), (" 3.0 ", "3"), (2.5, "2.5"), (True, "True")]
    + [(np.bool_(False), "False"), ("true", "True"), (" a ", "a"), (None, ""), (np.nan, "")],
)
def test_label_text_is_one_rule(value, text):
    assert table.label_text(value) == text


def test_training_and_evaluation_share_the_label_rule():
    from bnmodel import data, evaluate

    assert data._label_text is table.label_text and evaluate.label_text is table.label_text


def test_paths_are_accepted_as_strings_and_path_objects(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(TEXT)
    _same(_read(str(path)))
    _same(_read(Path(path)))
