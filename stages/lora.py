"""Stage lora: heal a checkpoint with a LoRA adapter merged into the weights (the adapter kept in `adapter/`) or by
full fine-tuning, on the LM loss, distillation from the unpruned teacher, or a mix of both."""
import argparse

from transformers import AutoTokenizer

from llmshrink import hardware, models, timing
from llmshrink.atomic import atomic_dir, atomic_file, write_json
from llmshrink.lora import heal, training_batches
from llmshrink.params import load, load_seed
from llmshrink.params.lora import Lora


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="checkpoint folder, e.g. models/width")
    parser.add_argument("text", help="fine-tuning text (lora.dataset=wikitext), e.g. data/finetune.txt")
    parser.add_argument("qa", help="QA training records (lora.dataset=triviaqa), e.g. data/qa_train.jsonl")
    parser.add_argument("teacher", help="unpruned checkpoint to distill from (lora.distill > 0), e.g. models/base")
    parser.add_argument("out", help="checkpoint folder to write, e.g. models/lora")
    parser.add_argument("metrics", help="metrics JSON, e.g. metrics/lora.json")
    parser.add_argument("loss", help="loss per step CSV, e.g. metrics/lora_loss.csv")
    args = parser.parse_args(argv)
    p, seed = load(Lora), load_seed()
    losses: list[float] = []
    if not p.enabled:
        metrics = models.passthrough(args.model, args.out)
        print(f"{args.out}: copy of {args.model} (lora.enabled=false)")
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        batches = training_batches(tokenizer, args.text, args.qa, p, seed)
        dtype = models.saved_dtype(args.model)
        model = models.load(args.model, "float32")  # fp32 master weights; bf16 autocast on a GPU
        teacher = models.load(args.teacher, "float32") if p.distill else None
        with atomic_dir(args.out) as tmp:
            healed = heal(model, batches, p, seed, tmp / models.ADAPTER_DIR, teacher=teacher)
            models.save(healed.model, tokenizer, tmp, dtype)
        losses, metrics = healed.losses, {"enabled": True, **healed.metrics}
        print(f"{args.out}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps, "
              f"target sparsity {metrics['sparsity_before']:.3f} -> {metrics['sparsity_after']:.3f}")
    write_json(args.metrics, hardware.stamped(metrics))
    with atomic_file(args.loss) as f:
        f.write("step,loss\n" + "".join(f"{i},{loss:.6f}\n" for i, loss in enumerate(losses, 1)))


if __name__ == "__main__":
    with timing.stage("lora"):
        main()
