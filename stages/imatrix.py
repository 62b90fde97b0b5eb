"""Stage imatrix: llama.cpp's importance matrix of a checkpoint (mean square of each input feature of every
weight matrix over calibration windows), as a GGUF imatrix file `llama-quantize --imatrix` reads."""
import argparse
from pathlib import Path

from llmshrink import hardware, imatrix, models, timing
from llmshrink.atomic import atomic_dir
from llmshrink.calib import token_windows
from llmshrink.params import load, load_seed
from llmshrink.params.imatrix import Imatrix

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="dense checkpoint folder, e.g. models/base")
    parser.add_argument("calibration", help="calibration text, e.g. data/calibration.txt")
    parser.add_argument("out", help=f"folder to write {imatrix.FILE_NAME} into, e.g. results/imatrix/base")
    args = parser.parse_args(argv)
    p, seed = load(Imatrix), load_seed()
    model = models.load(args.model, hardware.work_dtype())  # float32 on every CPU: the same file on every machine
    text = Path(args.calibration).read_text(encoding="utf-8")
    windows = token_windows(models.load_tokenizer(args.model), text, p.samples, p.seq_len, seed)
    data = imatrix.imatrix(model, windows)
    with atomic_dir(args.out) as tmp:
        imatrix.write_imatrix(tmp / imatrix.FILE_NAME, data, Path(args.calibration).name, p.seq_len)
    print(f"{args.out}/{imatrix.FILE_NAME}: {len(data)} matrices, {p.samples} x {p.seq_len} tokens of {args.calibration}")


if __name__ == "__main__":
    with timing.stage("imatrix"):
        main()
