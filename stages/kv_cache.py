"""Stage kv_cache: the final dense checkpoint with compressed KV caches (`kv.configs`) at run time: long-context
perplexity on the out-of-domain text with chunked prefill, cache bytes, peak memory and decode tokens/s, against
the `kv.baseline` cache, into a metrics JSON and a Markdown table."""
import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from llmshrink import hardware, kv_cache, kv_study, models, timing
from llmshrink.atomic import atomic_file, write_json
from llmshrink.params import InputError, load, load_seed
from llmshrink.params.evaluation import Eval
from llmshrink.params.kv import Kv
from llmshrink.perplexity import token_ids, windows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/lora")
    parser.add_argument("texts", help="named perplexity texts (the out-of-domain one is used), e.g. data/perplexity.json")
    parser.add_argument("metrics", help="JSON to write, e.g. metrics/kv_cache.json")
    parser.add_argument("table", help="Markdown table to write, e.g. metrics/kv_cache.md")
    args = parser.parse_args(argv)
    p, e, seed = load(Kv), load(Eval), load_seed()
    model_config = models.read_config(args.model)
    configs = kv_cache.configs(p, model_config)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    name, text = next((n, t["text"]) for n, t in texts.items() if t["domain"] == "out")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ids = token_ids(tokenizer, text)
    by_context = {c: windows(ids, c, p.windows) for c in p.contexts}
    short = [c for c, w in by_context.items() if len(w) < p.windows]
    if short:
        raise InputError(f"kv.windows={p.windows} x kv.contexts={short[0]} tokens exceed the {len(ids):,} "
                                f"tokens of the out-of-domain text {name!r}; lower kv.windows or kv.contexts")
    dtype = hardware.resolve_dtype(e.dtype)
    model = models.load(args.model, dtype)

    raw = kv_study.study(model, configs, by_context, p.chunk, p.decode_tokens)
    deploy = p.context or model_config["max_position_embeddings"]
    summary = kv_study.summarize(raw, configs, p.baseline, model_config, deploy, seed)
    write_json(args.metrics, hardware.stamped({
        "model": args.model, "text": name, "dtype": dtype, "device": hardware.name(model.device), "chunk": p.chunk,
        "windows": p.windows, "baseline": p.baseline, "deploy_context": deploy, "configs": summary}))
    table = kv_study.markdown(summary, p.baseline)
    with atomic_file(args.table) as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    with timing.stage("kv_cache"):
        main()
