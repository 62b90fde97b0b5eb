"""Stage prepare_model: the base checkpoint from `model.source`, saved in `model.dtype`."""
import argparse

from llmshrink import family, models, sources, timing
from llmshrink.atomic import atomic_dir
from llmshrink.params import load, load_seed
from llmshrink.params.model import Model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="checkpoint folder to write, e.g. models/base")
    args = parser.parse_args(argv)
    p, seed = load(Model), load_seed()
    if p.source == "embedded":
        model, tokenizer = sources.load_embedded()
    elif p.source == "gemma3-270m":
        model, tokenizer = sources.load_gemma3_270m()
    elif p.source == "hub":
        model, tokenizer = sources.load_hub(p.hub_id, p.hub_revision)
    elif p.source == "local":
        model, tokenizer = sources.load_local(p.local_path)
    elif p.source == "tiny":
        model, tokenizer = sources.tiny_model(p.tiny, seed, p.tokenizer)
    else:
        model, tokenizer = sources.shaped_model(p.shape, seed, p.tokenizer)
    with atomic_dir(args.out) as tmp:
        models.save(model, tokenizer, tmp, p.dtype)
    print(f"{args.out}: {model.config.model_type}, {model.config.num_hidden_layers} layers, "
          f"{sum(t.numel() for t in model.parameters()):,} parameters; {family.of(model).describe()}")


if __name__ == "__main__":
    with timing.stage("prepare_model"):
        main()
