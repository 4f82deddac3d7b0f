import numpy as np
import pytest

from keras_ptx.inference.score import (classification_metrics, competition_score, dice_from_counts,
                                       dice_per_image, roc_auc, roc_curve)


def _mask(*pixels, shape=(4, 4)):
    m = np.zeros(shape, np.uint8)
    for r, c in pixels:
        m[r, c] = 1
    return m


def test_both_empty_scores_one():
    empty = _mask()
    assert dice_per_image(empty[None], empty[None]).tolist() == [1.0]


def test_false_positive_on_empty_image_scores_zero():
    assert dice_per_image(_mask((0, 0))[None], _mask()[None]).tolist() == [0.0]


def test_miss_scores_zero():
    assert dice_per_image(_mask()[None], _mask((1, 1), (1, 2))[None]).tolist() == [0.0]


def test_partial_overlaps_by_hand():
    # pred 3 px, truth 2 px, 1 shared: 2*1/(3+2) = 0.4
    pred = _mask((0, 0), (0, 1), (0, 2))
    truth = _mask((0, 2), (3, 3))
    # pred 2 px, truth 2 px, both shared: 1
    same = _mask((2, 2), (2, 3))
    # pred 4 px, truth 1 px inside it: 2/5 = 0.4; non-binary values count as foreground
    big = _mask((1, 0), (1, 1), (2, 0), (2, 1)) * 255
    small = _mask((1, 1))
    preds = np.stack([pred, same, big])
    truths = np.stack([truth, same, small])
    np.testing.assert_allclose(dice_per_image(preds, truths), [0.4, 1.0, 0.4])
    assert competition_score(preds, truths) == pytest.approx(0.6)


def test_score_mixes_empty_and_positive_images():
    preds = np.stack([_mask(), _mask((0, 0)), _mask((1, 1)), _mask()])
    truths = np.stack([_mask(), _mask(), _mask((1, 1)), _mask((2, 2))])
    assert competition_score(preds[..., None], truths[..., None]) == pytest.approx(0.5)


def test_dice_from_counts_broadcasts():
    out = dice_from_counts(np.array([[0], [3]]), np.array([[0, 2]]), np.array([[0], [3]]))
    np.testing.assert_allclose(out, [[1.0, 0.0], [2 * 3 / 3, 2 * 3 / 5]])


def test_shape_mismatch_and_empty_batch_are_errors():
    with pytest.raises(ValueError, match="differ in shape"):
        dice_per_image(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="no images"):
        competition_score(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))


def test_auc_by_hand_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) (0.9>0.1) (0.5=0.5 half) (0.5>0.1)
    assert roc_auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(3.5 / 4)
    assert roc_auc([0.1, 0.2], [0, 1]) == 1.0
    assert roc_auc([0.1, 0.2], [1, 1]) is None


def test_roc_curve_steps_through_tie_groups():
    fpr, tpr, thresholds = roc_curve([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds[1:], [0.9, 0.5, 0.1])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]))


def test_classification_metrics_by_hand():
    m = classification_metrics([0.9, 0.4, 0.6, 0.1, 0.2], [1, 1, 0, 0, 0], threshold=0.5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert classification_metrics([0.9], [0])["sensitivity"] is None
