"""Stage prepare_model: the base checkpoint in models/base from `model.source`."""
from llmshrink import models
from llmshrink.atomic import atomic_dir
from llmshrink.params import choice, load_params

OUT = "models/base"


def main() -> None:
    params = load_params()
    p = params["model"]
    choice("model.dtype", p["dtype"], models.DTYPES)
    source = choice("model.source", p["source"], ("embedded", "hub", "local", "tiny"))
    if source == "embedded":
        model, tokenizer = models.load_embedded()
    elif source == "hub":
        model, tokenizer = models.load_hub(p["hub_id"])
    elif source == "local":
        model, tokenizer = models.load_local(p["local_path"])
    else:
        model, tokenizer = models.tiny_model(p["tiny"], params["seed"])
    with atomic_dir(OUT) as tmp:
        models.save(model, tokenizer, tmp, p["dtype"])
    print(f"{OUT}: {model.config.model_type}, {model.config.num_hidden_layers} layers, "
          f"{sum(t.numel() for t in model.parameters()):,} parameters")


if __name__ == "__main__":
    main()
