"""keras_ptx.data.annotations: both SIIM label layouts, the problem report, writing, unions."""
import re

import numpy as np
import pytest

from keras_ptx.data import rle
from keras_ptx.data.annotations import (AnnotationError, Annotations, Problem, check_rle_syntax,
                                        load_annotations, union_mask, write_annotations)
from keras_ptx.errors import UserError

# Rows as they appear in the published files (ids shortened).
STAGE1 = ("ImageId, EncodedPixels\n"
          "1.2.276.0.7230010.3.1.4.1, -1\n"
          "1.2.276.0.7230010.3.1.4.2, 5 3 10 2\n"
          "1.2.276.0.7230010.3.1.4.2, 40 4\n"
          "1.2.276.0.7230010.3.1.4.3, 0 1\n")
STAGE2 = STAGE1.replace(", ", ",")


def write_text(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, layout", [(STAGE1, "stage1"), (STAGE2, "stage2")])
def test_both_published_layouts_are_detected_and_read(tmp_path, text, layout):
    labels = load_annotations(write_text(tmp_path, text))
    assert labels.layout == layout
    assert isinstance(labels, Annotations) and len(labels) == 3
    assert list(labels) == ["1.2.276.0.7230010.3.1.4.1", "1.2.276.0.7230010.3.1.4.2",
                            "1.2.276.0.7230010.3.1.4.3"]
    assert labels["1.2.276.0.7230010.3.1.4.1"] == ()
    assert labels["1.2.276.0.7230010.3.1.4.2"] == ("5 3 10 2", "40 4")   # stripped, file order
    assert labels["1.2.276.0.7230010.3.1.4.3"] == ("0 1",)
    assert labels.report == []


def test_multi_row_image_mask_is_the_union_and_the_count_is_kept(tmp_path):
    labels = load_annotations(write_text(tmp_path, STAGE1))
    rles = labels["1.2.276.0.7230010.3.1.4.2"]
    assert len(rles) == 2
    mask = union_mask(rles, 8, 8)
    expected = rle.decode(rles[0], 8, 8) | rle.decode(rles[1], 8, 8)
    assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
    assert mask.sum() == 3 + 2 + 4


def test_overlapping_annotations_union_without_overflow():
    mask = union_mask(["0 4", "2 4"], 4, 2)
    assert mask.max() == 1 and mask.sum() == 6


def test_union_of_no_rles_is_an_empty_mask():
    mask = union_mask((), 5, 3)
    assert mask.shape == (5, 3) and mask.dtype == np.uint8 and not mask.any()
    with pytest.raises(ValueError):
        union_mask((), 0, 3)


def test_problems_are_reported_with_line_numbers(tmp_path):
    text = ("ImageId,EncodedPixels\n"          # 1
            "dup,1 2\n"                         # 2
            "dup,3 4\n"                         # 3
            "dup, 1 2\n"                        # 4 duplicate of line 2 (whitespace aside)
            "neg,-1\n"                          # 5
            "neg,-1\n"                          # 6 duplicate negative
            "both,-1\n"                         # 7
            "both,2 3\n"                        # 8 conflict
            "bad,1 2 3\n"                       # 9 malformed: odd count
            "bad,4 5\n"                         # 10 left out with it
            ",1 2\n"                            # 11 empty ImageId
            "wide,1 2,3\n"                      # 12 three columns
            "\n"                                # 13 blank: ignored
            "zero,4 0\n"                        # 14 zero-length run
            "words,one two\n"                   # 15 non-integer
            "ok,7 1\n")                         # 16
    labels = load_annotations(write_text(tmp_path, text))
    assert dict(labels) == {"dup": ("1 2", "3 4"), "neg": (), "ok": ("7 1",)}
    found = [(p.line, p.image_id, p.kind) for p in labels.report]
    assert found == [(4, "dup", "duplicate"), (6, "neg", "duplicate"), (8, "both", "conflict"),
                     (9, "bad", "malformed"), (10, "bad", "malformed"), (11, "", "malformed"),
                     (12, "wide", "malformed"), (14, "zero", "malformed"),
                     (15, "words", "malformed")]
    messages = {p.line: p.message for p in labels.report}
    assert "line 2" in messages[4]
    assert "line 7" in messages[8] and "line 8" in messages[8]
    assert "odd" in messages[9]
    assert "2 columns" in messages[12]
    assert "non-positive length" in messages[14]
    assert "integer" in messages[15]
    assert all(isinstance(p, Problem) for p in labels.report)


def test_conflict_is_reported_whichever_comes_first(tmp_path):
    labels = load_annotations(write_text(tmp_path, "ImageId, EncodedPixels\na, 1 2\na, -1\n"))
    assert "a" not in labels
    assert [(p.line, p.kind) for p in labels.report] == [(3, "conflict")]


def test_quoted_multiline_rows_keep_physical_line_numbers(tmp_path):
    text = 'ImageId,EncodedPixels\n"a\nb",1 2\nc,1 x\n'
    labels = load_annotations(write_text(tmp_path, text))
    assert [(p.line, p.image_id) for p in labels.report] == [(4, "c")]


def test_byte_order_mark_is_tolerated(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + STAGE2.encode())
    assert load_annotations(path).layout == "stage2"


@pytest.mark.parametrize("text", ["", "ImageId;EncodedPixels\n", "image,rle\na,-1\n",
                                  "ImageId,EncodedPixels,Extra\n", "ImageId , EncodedPixels\n"])
def test_wrong_header_is_a_clear_error(tmp_path, text):
    with pytest.raises(AnnotationError, match="expected the header"):
        load_annotations(write_text(tmp_path, text))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AnnotationError, match="absent.csv: no such label file"):
        load_annotations(tmp_path / "absent.csv")
    assert issubclass(AnnotationError, UserError)


@pytest.mark.parametrize("data, where", [
    ("ImageId,EncodedPixels\n".encode("utf-16"), "byte 0xff on line 1"),
    (STAGE2.encode() + "1.2.3,-1 é\n".encode("latin-1"), "byte 0xe9 on line 6"),
], ids=["utf-16", "latin-1"])
def test_text_that_is_not_utf8_is_a_clear_error(tmp_path, data, where):
    path = tmp_path / "labels.csv"
    path.write_bytes(data)
    with pytest.raises(AnnotationError, match=re.escape(f"{path}: not UTF-8 text ({where})")):
        load_annotations(path)


def test_a_field_too_long_for_csv_is_a_clear_error(tmp_path):
    path = write_text(tmp_path, STAGE2 + "1.2.3," + "1 2 " * 40000 + "\n")
    with pytest.raises(AnnotationError, match="labels.csv line 6: field larger than field limit"):
        load_annotations(path)


# ---------------------------------------------------------------- writing

ROWS = [("1.2.3.1", "-1"), ("1.2.3.2", "5 3 10 2"), ("1.2.3.2", "40 4"), ("1.2.3.3", " 0 1 ")]


def test_write_stage1_is_byte_exact(tmp_path):
    path = write_annotations(tmp_path / "train-rle.csv", ROWS)
    assert path.read_bytes() == (b"ImageId, EncodedPixels\n1.2.3.1, -1\n1.2.3.2, 5 3 10 2\n"
                                 b"1.2.3.2, 40 4\n1.2.3.3, 0 1\n")


def test_write_stage2_is_byte_exact(tmp_path):
    path = write_annotations(tmp_path / "stage_2_train.csv", ROWS, layout="stage2")
    assert path.read_bytes() == (b"ImageId,EncodedPixels\n1.2.3.1,-1\n1.2.3.2,5 3 10 2\n"
                                 b"1.2.3.2,40 4\n1.2.3.3,0 1\n")


@pytest.mark.parametrize("layout", ["stage1", "stage2"])
def test_write_then_load_round_trips(tmp_path, layout):
    rng = np.random.default_rng(7)
    rows, expected = [], {}
    for i in range(20):
        image_id = f"1.2.276.0.7230010.3.1.4.{i}"
        masks = [rle.encode((rng.random((16, 16)) < 0.1).astype(np.uint8))
                 for _ in range(int(rng.integers(0, 3)))]
        masks = [m for m in masks if m != "-1"]
        rows += [(image_id, m) for m in masks] or [(image_id, "-1")]
        expected[image_id] = tuple(masks)
    path = write_annotations(tmp_path / "labels.csv", rows, layout=layout)
    labels = load_annotations(path)
    assert labels.layout == layout and dict(labels) == expected and labels.report == []


def test_empty_value_is_written_as_the_negative_marker(tmp_path):
    path = write_annotations(tmp_path / "l.csv", [("a", "")], layout="stage2")
    assert path.read_text() == "ImageId,EncodedPixels\na,-1\n"


@pytest.mark.parametrize("rows, match", [
    ([("a", "1 2 3")], "odd"),
    ([("a", "1 -2")], "non-positive"),
    ([("", "1 2")], "ImageId"),
    ([("a,b", "1 2")], "ImageId"),
])
def test_write_rejects_bad_rows_and_leaves_no_file(tmp_path, rows, match):
    path = tmp_path / "labels.csv"
    with pytest.raises(ValueError, match=match):
        write_annotations(path, rows)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_unknown_layout(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_annotations(tmp_path / "l.csv", [], layout="stage3")


@pytest.mark.parametrize("text", ["-1", " -1", "", "0 5", "3 1 0 2"])
def test_syntax_check_accepts_valid_values(text):
    check_rle_syntax(text)


@pytest.mark.parametrize("text", ["1", "a b", "1 0", "-2 3", "1 2 -1 1"])
def test_syntax_check_rejects_malformed_values(text):
    with pytest.raises(ValueError):
        check_rle_syntax(text)
