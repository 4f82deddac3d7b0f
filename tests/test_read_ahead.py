"""inference.predict.read_ahead: the items in order, an error where it happened, and a
consumer that stops early stops the thread."""
import threading
import time

import pytest

from keras_ptx.inference.predict import read_ahead


def test_items_come_in_order_and_an_error_where_it_happened():
    def items():
        yield from range(5)
        raise ValueError("file 5 broke")
    got = []
    with pytest.raises(ValueError, match="file 5 broke"):
        for item in read_ahead(items(), 2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert list(read_ahead(iter([]), 3)) == []


def test_a_consumer_that_stops_early_stops_the_thread():
    taken = []

    def items():
        for k in range(1000):
            taken.append(k)
            yield k
    before = set(threading.enumerate())
    ahead = read_ahead(items(), 2)
    assert next(ahead) == 0
    ahead.close()
    time.sleep(0.5)
    assert len(taken) <= 5                     # one handed out, two queued, one waiting
    assert not set(threading.enumerate()) - before       # its thread has ended
