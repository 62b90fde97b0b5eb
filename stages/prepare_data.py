"""Stage prepare_data: calibration, fine-tuning, perplexity and QA text under data/ from `data.source`."""
import tempfile
from pathlib import Path

from llmshrink.data import FILES, prepare
from llmshrink.params import load_params

OUT = Path("data")


def main() -> None:
    sets = prepare(load_params()["data"])
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        sets.write(Path(tmp))
        for name in FILES:
            (Path(tmp) / name).replace(OUT / name)
    print(f"data/: {len(sets.calibration):,} calibration chars, {len(sets.finetune):,} fine-tuning chars, "
          f"{len(sets.perplexity):,} perplexity chars, {len(sets.qa)} + {len(sets.qa_train)} QA")


if __name__ == "__main__":
    main()
