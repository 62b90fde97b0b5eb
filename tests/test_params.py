"""Reading params.yaml as DVC writes it."""
from pathlib import Path

import pytest

from llmshrink.params import choice, in_range, integer, load, load_seed, read
from llmshrink.params.gptq import Eora
from llmshrink.params.sections import SECTIONS
from llmshrink.params.width import Wanda


def test_unquoted_n_m_pattern_stays_a_string(tmp_path: Path) -> None:
    # `dvc exp run -S wanda.pattern=2:4` writes the value unquoted; YAML 1.1 would read 124 (base 60).
    path = tmp_path / "params.yaml"
    path.write_text("wanda:\n  pattern: 2:4\nexplore:\n  repeat: {14: 2}\n  limit: null\n")
    assert read(path) == {"wanda": {"pattern": "2:4"}, "explore": {"repeat": {14: 2}, "limit": None}}


def test_errors_name_the_parameter() -> None:
    with pytest.raises(ValueError, match=r"prune\.criterion='size' is not allowed; choose one of \['ppl', 'taylor'\]"):
        choice("prune.criterion", "size", ["ppl", "taylor"])
    with pytest.raises(ValueError, match=r"lora\.dropout=1\.0 is out of range; allowed \[0, 1\)"):
        in_range("lora.dropout", 1.0, 0, 1, high_open=True)
    assert in_range("prune.layers", 2, 0, 24) == 2


def test_integer_refuses_bools_floats_and_out_of_range() -> None:
    assert integer("lora.steps", 12, 1) == 12
    for bad in (True, 1.5, "3"):
        with pytest.raises(ValueError, match=r"lora\.steps=.* must be an integer"):
            integer("lora.steps", bad, 1)
    with pytest.raises(ValueError, match=r"lora\.steps=0 is out of range; allowed \[1, inf\]"):
        integer("lora.steps", 0, 1)


def test_every_section_of_the_repo_params_loads(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "params.yaml"
    assert load_seed(root) == 0
    for section, cls in SECTIONS.items():
        assert cls.SECTION == section and isinstance(load(cls, root), cls), section
    w = load(Wanda, root)
    assert (w.n, w.m, w.target, w.name) == (1, 8, 0.125, "1:8")
    with pytest.raises(ValueError, match=r"params\.yaml has no section 'wanda'"):
        (tmp_path / "params.yaml").write_text("seed: 0\n")
        load(Wanda, tmp_path / "params.yaml")


def test_load_refuses_unknown_missing_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: -1\neora: {enabled: true, rank: 8, samples: 4, seq_len: 64, seed: 0}\n")
    with pytest.raises(ValueError, match=r"seed=-1 is out of range; allowed \[0, inf\]"):
        load_seed(path)
    with pytest.raises(ValueError, match=r"eora\.seed is not a parameter"):
        load(Eora, path)
    path.write_text("eora: {enabled: true, rank: 8, samples: 4}\n")
    with pytest.raises(ValueError, match=r"eora\.seq_len is missing from params\.yaml"):
        load(Eora, path)
    path.write_text("eora: {enabled: yes, rank: 8, samples: 4, seq_len: 64}\n")  # YAML 1.2: `yes` is a string
    with pytest.raises(ValueError, match=r"eora\.enabled='yes' is not allowed"):
        load(Eora, path)
