"""Stage prepare_data: calibration, fine-tuning, perplexity and QA text from `data.source` into a folder."""
import argparse
import shutil
from pathlib import Path

from llmshrink import timing
from llmshrink.atomic import temp_dir
from llmshrink.data import FILES, prepare
from llmshrink.params import load, load_seed
from llmshrink.params.data import Data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help=f"folder to write {', '.join(FILES)} into, e.g. data")
    args = parser.parse_args(argv)
    sets = prepare(load(Data), load_seed())
    out = Path(args.out)
    tmp = temp_dir(out / "prepare")
    try:  # all files written, then moved in
        sets.write(tmp)
        for name in FILES:
            (tmp / name).replace(out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    texts = ", ".join(f"{name} ({t['domain']}) {len(t['text']):,}" for name, t in sets.perplexity.items())
    tasks = ", ".join(f"{name} {len(t['items'])}" for name, t in sets.choice.items())
    print(f"{out}/: {len(sets.calibration):,} calibration chars, {len(sets.finetune):,} fine-tuning chars, "
          f"perplexity texts (chars): {texts}; {len(sets.qa)} + {len(sets.qa_train)} QA; multiple choice: {tasks}")


if __name__ == "__main__":
    with timing.stage("prepare_data"):
        main()
