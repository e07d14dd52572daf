"""The README's own-objective example runs as written: one LossTransform trained, unchanged, on a
2-D flow and on GDSS through the same ``train``."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_transform_trains_a_flow_and_gdss():
    text = README.read_text()
    block = re.search(r"<!-- readme-transform -->\s*```python\n(.*?)```\s*<!-- /readme-transform -->", text, re.S)
    assert block, "the README's transform example is missing its markers"
    scope: dict = {}
    exec(compile(block.group(1), str(README), "exec"), scope)  # noqa: S102 (our own README)
    for name in ("flow", "gdss"):
        result = scope[name]
        m = result.summary["final_metrics"]
        assert np.isfinite(m["loss"]) and m["mean_weight"] > 0, (name, m)
        assert int(result.state.step) == (200 if name == "flow" else 20)
    # the weights really vary with the reward: on the circle the mean weight lies between its extremes
    assert np.exp(-1.0) < scope["flow"].summary["final_metrics"]["mean_weight"] < np.exp(1.0)
