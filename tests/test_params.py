"""Reading params.yaml as DVC writes it."""
from pathlib import Path

import pytest

from llmshrink.params import choice, in_range, integer, load_params


def test_unquoted_n_m_pattern_stays_a_string(tmp_path: Path) -> None:
    # `dvc exp run -S wanda.pattern=2:4` writes the value unquoted; YAML 1.1 would read 124 (base 60).
    path = tmp_path / "params.yaml"
    path.write_text("wanda:\n  pattern: 2:4\nexplore:\n  repeat: {14: 2}\n  limit: null\n")
    assert load_params(path) == {"wanda": {"pattern": "2:4"}, "explore": {"repeat": {14: 2}, "limit": None}}


def test_errors_name_the_parameter() -> None:
    with pytest.raises(ValueError, match=r"prune\.criterion='size' is not allowed; choose one of \['ppl', 'taylor'\]"):
        choice("prune.criterion", "size", ["ppl", "taylor"])
    with pytest.raises(ValueError, match=r"wanda\.sparsity=1\.0 is out of range; allowed \[0, 1\)"):
        in_range("wanda.sparsity", 1.0, 0, 1, high_open=True)
    assert in_range("prune.layers", 2, 0, 24) == 2


def test_integer_refuses_bools_floats_and_out_of_range() -> None:
    assert integer("lora.steps", 12, 1) == 12
    for bad in (True, 1.5, "3"):
        with pytest.raises(ValueError, match=r"lora\.steps=.* must be an integer"):
            integer("lora.steps", bad, 1)
    with pytest.raises(ValueError, match=r"lora\.steps=0 is out of range; allowed \[1, inf\]"):
        integer("lora.steps", 0, 1)
