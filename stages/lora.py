"""Stage lora: heal models/width with a LoRA adapter, merged into models/lora (adapter kept in models/lora/adapter)."""
from transformers import AutoTokenizer

from llmshrink import models
from llmshrink.atomic import atomic_dir, atomic_file, copy_dir, write_json
from llmshrink.lora import heal, training_batches, validate
from llmshrink.params import choice, load_params

SRC, OUT, DATA = "models/width", "models/lora", "data"
METRICS, LOSS_CSV = "metrics/lora.json", "metrics/lora_loss.csv"

def main() -> None:
    params = load_params()
    p, dtype = params["lora"], params["model"]["dtype"]
    validate(p)
    choice("model.dtype", dtype, models.DTYPES)
    if not p["enabled"]:
        copy_dir(SRC, OUT)
        losses, metrics = [], {"enabled": False}
    else:
        tokenizer = AutoTokenizer.from_pretrained(SRC)
        batches = training_batches(tokenizer, DATA, p)
        model = models.load(SRC)
        with atomic_dir(OUT) as tmp:
            healed = heal(model, batches, p, tmp / "adapter")
            models.save(healed.model, tokenizer, tmp, dtype)
        losses, metrics = healed.losses, {"enabled": True, **healed.metrics}
    write_json(METRICS, metrics)
    with atomic_file(LOSS_CSV) as f:
        f.write("step,loss\n" + "".join(f"{i},{loss:.6f}\n" for i, loss in enumerate(losses, 1)))
    if losses:
        print(f"{OUT}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {len(losses)} steps, "
              f"target sparsity {metrics['sparsity_before']:.3f} -> {metrics['sparsity_after']:.3f}")
    else:
        print(f"{OUT}: copied from {SRC} (lora.enabled=false)")

if __name__ == "__main__":
    main()
