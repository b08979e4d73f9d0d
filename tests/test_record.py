import json

import numpy as np
import pytest

from ttbench import record
from ttbench.core.timing import Curves


def test_curves_round_trip(tmp_path):
    curves = {
        "real": Curves(np.array([1.0, 0.5, 0.25]), np.array([0.8, 0.2, 0.0])),
        "ode": Curves(np.array([1.0, 0.6, np.nan]), np.array([0.8, 0.3, np.nan]), diverged=True),
        "sgd": Curves(np.array([1.0, 0.7]), np.array([0.5, 0.4]), interval=5),
    }
    path = tmp_path / record.CURVES
    record.write_curves(path, curves)
    back = record.read_curves(path, {"ode": True})
    assert list(back) == ["real", "ode", "sgd"]
    assert back["sgd"].interval == 5 and back["sgd"].steps == 5
    for name, c in curves.items():
        np.testing.assert_array_equal(back[name].loss, c.loss)
        np.testing.assert_array_equal(back[name].error, c.error)
        assert back[name].diverged == c.diverged


def test_json_round_trip_and_atomicity(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"0.01": 3}}
    path = tmp_path / "result.json"
    record.write_json(path, obj)
    assert record.read_result(path) == obj
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left behind
    with pytest.raises(ValueError):
        record.write_json(path, {"x": float("nan")})
    assert record.read_result(path) == obj  # a failed write leaves the old record intact


def test_t_eps_and_error_entries():
    real = Curves(np.array([10.0, 6, 3, 2, 1.5, 1]), np.array([0.8, 0.4, 0.2, 0.1, 0, 0]))
    pred = Curves(np.array([10.0, 8, 6, 3, 1.5, 1]), np.array([0.8, 0.8, 0.4, 0.2, 0.1, 0]))
    r = record.t_eps_entry(real, [0.4, 0.1])
    p = record.t_eps_entry(pred, [0.4, 0.1])
    assert r["loss"] == {"0.4": 2, "0.1": 4}
    err = record.error_entry(p, r)
    assert err["loss"]["0.4"] == {"abs": 1, "rel": 0.5}
    json.dumps(err)
