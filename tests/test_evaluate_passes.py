"""bin/evaluate's model passes: several scorers (a fold folder's runs) fill one cache, and the
image-level gating is searched only when every scorer's probability is a label head's."""
import numpy as np

from keras_ptx.config import load_config
from keras_ptx.data.records_dir import RecordsDir
from keras_ptx.inference.evaluate import Inputs, Scorer, model_passes
from keras_ptx.inference.search import SearchGrid, search
from keras_ptx.model import build_model
from keras_ptx.tf_setup import tf
from test_train import write_records


def _config(*overrides):
    return load_config(None, ["model.encoder=efficientnetb0", "model.weights=none",
                              "data.image_size=64", "model.prune_level=1", "eval.batch_size=4",
                              *overrides])


def test_a_scorer_without_a_label_head_turns_gating_off_whatever_the_last_one_has(tmp_path):
    records = RecordsDir(str(write_records(tmp_path, "val", 6, seed=3)))
    tf.keras.utils.set_random_seed(0)
    plain = _config("model.classification_head=false")
    headed = _config("model.classification_head=true")
    scorers = [Scorer("fold 0", [build_model(plain)], plain),
               Scorer("fold 1", [build_model(headed)], headed)]     # the last one has a head
    inputs = Inputs(["folds"], records, str(tmp_path), False, True, scorers)
    seen = model_passes(inputs, "val", "none", None, SearchGrid(), progress=False)
    assert not seen.label_head and len(seen.cache) == 12
    assert np.isfinite(seen.cache.all_cls_prob()).all()
    assert not any(kind.startswith("gated") for kind in search(seen.cache,
                                                               gated=seen.label_head))
    inputs = Inputs(["folds"], records, str(tmp_path), False, True, scorers[1:])
    assert model_passes(inputs, "val", "none", None, SearchGrid(), progress=False).label_head
