"""Stage reference: the base model's next-token distribution (top-k log-probabilities) on the out-of-domain
perplexity windows, computed once, so that every evaluation measures its KL divergence to the base."""
import argparse
import json

from llmshrink import hardware, kl, models, timing
from llmshrink.atomic import atomic_file
from llmshrink.params import load
from llmshrink.params.evaluation import Eval


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="the base checkpoint, e.g. models/base")
    parser.add_argument("texts", help="perplexity texts of prepare_data, e.g. data/perplexity.json")
    parser.add_argument("out", help="safetensors file to write, e.g. results/reference.safetensors")
    args = parser.parse_args(argv)
    p = load(Eval)
    texts = json.load(open(args.texts, encoding="utf-8"))
    name = next((n for n, t in texts.items() if t["domain"] == "out"), next(iter(texts)))
    model = models.load(args.model, hardware.resolve_dtype(p.dtype))
    ref = kl.reference(model, models.load_tokenizer(args.model), texts[name]["text"], p.seq_len, p.max_windows,
                       p.kl_top_k, p.batch_size)
    with atomic_file(args.out, "wb") as f:
        f.write(kl.serialize(ref, name))
    print(f"{args.out}: top-{p.kl_top_k} log-probs of {args.model} on {name}, {tuple(ref['logprobs'].shape)}")


if __name__ == "__main__":
    with timing.stage("reference"):
        main()
