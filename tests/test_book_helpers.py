import numpy as np

from specdec.book import glue


def test_glue_hands_myst_nb_plain_numbers(monkeypatch):
    seen = {}
    import myst_nb

    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: seen.update({name: value}))
    glue("x", np.float64(0.25))
    glue("n", np.int64(3))
    glue("s", "text")
    assert seen == {"x": 0.25, "n": 3, "s": "text"}
    assert type(seen["x"]) is float and type(seen["n"]) is int
