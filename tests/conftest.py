"""Test order: the files that take longest first, so that `make test`'s workers (pytest-xdist,
one file per worker at a time) finish together instead of one running a heavy file alone at
the end. The list is by measured time (a full run's per-file sums, longest first); files not
in it keep their order after it."""
LONGEST_FIRST = ["test_train.py", "test_evaluate_predict.py", "test_ensemble.py", "test_export.py",
                 "test_multiworker.py", "test_demo.py", "test_warm_start.py", "test_model.py",
                 "test_folds.py", "test_doctor.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
