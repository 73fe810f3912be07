"""Train the warm-start policy shipped in ``grpo_lightning/assets/arith-policy``.

Supervised next-token training of ``model_config()`` on the training split of
the addition task, with loss on the answer and ``<eos>`` only. In 60% of the
training examples (redrawn every epoch from the seed) the label's last digit is
replaced by ``(d + 1) % 10``, so the policy learns to put ~60% of its mass on a
wrong last digit: the correct answer is often sampled but rarely greedy, which
is what GRPO then fixes. Validation rows are never trained on; they are used
only for the accuracy numbers written to the model card.

Usage::

    python scripts/make_arith_checkpoint.py [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

import torch
from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from grpo_lightning.data.tasks.arithmetic import build_tokenizer, correct_answer, load_splits, model_config

NOISE_RATE = 0.6
SAMPLES_PER_PROMPT = 8
MAX_NEW_TOKENS = 4
IGNORE_INDEX = -100


def shift_last_digit(answer: str) -> str:
    """Return ``answer`` with its last digit ``d`` replaced by ``(d + 1) % 10``."""
    return answer[:-1] + str((int(answer[-1]) + 1) % 10)


@dataclass(frozen=True)
class Examples:
    """Right-padded ``<bos>prompt answer<eos>`` sequences, clean and with the last digit shifted."""

    clean: torch.Tensor
    shifted: torch.Tensor
    attention_mask: torch.Tensor
    target_mask: torch.Tensor
    """True on the answer and ``<eos>`` positions, the only ones with a loss."""


def make_examples(rows: list[dict], tokenizer: PreTrainedTokenizerFast) -> Examples:
    """Encode every row twice: with its answer and with the answer's last digit shifted."""

    def encode(answers: list[str]) -> dict[str, torch.Tensor]:
        texts = [row["prompt"] + answer + tokenizer.eos_token for row, answer in zip(rows, answers)]
        # Right padding keeps every sequence at positions 0.., as generate() does for left-padded prompts.
        return tokenizer(texts, padding=True, padding_side="right", return_tensors="pt")

    answers = [row["answer"] for row in rows]
    clean = encode(answers)
    prompt_lengths = torch.tensor([len(tokenizer(row["prompt"])["input_ids"]) for row in rows])
    positions = torch.arange(clean["input_ids"].shape[1])
    return Examples(
        clean=clean["input_ids"],
        shifted=encode([shift_last_digit(answer) for answer in answers])["input_ids"],
        attention_mask=clean["attention_mask"],
        target_mask=(positions >= prompt_lengths[:, None]) & clean["attention_mask"].bool(),
    )


def train(
    model: LlamaForCausalLM,
    examples: Examples,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> None:
    """AdamW with linear warm-up and cosine decay over reshuffled epochs of ``examples``.

    Every epoch, each example independently gets the shifted label with
    probability ``NOISE_RATE``. Fixing the choice once per example instead lets
    the model memorise which training problems were corrupted, and that
    memorisation leaks into unseen prompts as a random per-prompt preference
    for the correct digit: greedy decoding is then right far more often.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / steps))),
    )
    generator = torch.Generator().manual_seed(seed)
    num_examples = len(examples.clean)
    order = torch.empty(0, dtype=torch.long)
    model.train()
    for step in range(steps):
        if len(order) < batch_size:
            order = torch.randperm(num_examples, generator=generator)
            noisy = torch.rand(num_examples, generator=generator) < NOISE_RATE
            input_ids = torch.where(noisy[:, None], examples.shifted, examples.clean)
            labels = input_ids.masked_fill(~examples.target_mask, IGNORE_INDEX)
        batch, order = order[:batch_size], order[batch_size:]
        loss = model(
            input_ids=input_ids[batch],
            attention_mask=examples.attention_mask[batch],
            labels=labels[batch],
        ).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}", flush=True)
    model.eval()


@torch.no_grad()
def evaluate(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, rows: list[dict], seed: int
) -> dict[str, float]:
    """Greedy and sampled (T=1) exact-match accuracy, and the well-formed fraction of samples."""
    prompts = [row["prompt"] for row in rows]
    answers = [row["answer"] for row in rows]
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]

    greedy = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    greedy_text = tokenizer.batch_decode(greedy[:, prompt_length:], skip_special_tokens=True)

    torch.manual_seed(seed)
    sampled = model.generate(
        **inputs,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        num_return_sequences=SAMPLES_PER_PROMPT,
    )[:, prompt_length:]
    sampled_text = tokenizer.batch_decode(sampled, skip_special_tokens=True)
    repeated = [answer for answer in answers for _ in range(SAMPLES_PER_PROMPT)]
    # Decoding with special tokens kept exposes whether generation stopped on <eos>.
    well_formed = re.compile(rf"\d+{re.escape(tokenizer.eos_token)}(?:{re.escape(tokenizer.pad_token)})*")
    raw_text = tokenizer.batch_decode(sampled, skip_special_tokens=False)
    return {
        "greedy_accuracy": fmean(correct_answer(prompts, greedy_text, answer=answers)),
        "sampled_accuracy": fmean(correct_answer(prompts * SAMPLES_PER_PROMPT, sampled_text, answer=repeated)),
        "well_formed": fmean(well_formed.fullmatch(text) is not None for text in raw_text),
    }


def make_tokenizer_config_portable(out: Path) -> None:
    """Name the tokenizer class so that transformers 4.x loads the checkpoint too.

    transformers 5 records its own class name, ``TokenizersBackend``, which 4.x does not know;
    ``PreTrainedTokenizerFast`` is the same tokenizer under the name both versions resolve.
    """
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def write_model_card(
    out: Path, metrics: dict[str, float], *, command: str, num_params: int, num_val: int, seconds: float
) -> None:
    """Write the README.md model card next to the checkpoint."""
    date = datetime.date.today().isoformat()
    (out / "README.md").write_text(
        f"""# arith-policy: warm-start policy for the 2-digit addition GRPO demo

Produced by `scripts/make_arith_checkpoint.py`; do not edit by hand.

- Command: `{command}`
- Date: {date} (training took {seconds:.0f} s on CPU)
- Model: Llama decoder from `grpo_lightning.data.tasks.arithmetic.model_config()`
  ({num_params:,} parameters, float32, safetensors)
- Tokenizer: character level, from `grpo_lightning.data.tasks.arithmetic.build_tokenizer()`

Supervised on the training split of `load_splits()` only, `<bos>12+34=46<eos>`
with loss on the answer and `<eos>`. Each time an example was drawn, with
probability {NOISE_RATE:.0%} its label's last digit `d` was replaced by `(d + 1) % 10`,
so the correct answer is often sampled but rarely the greedy choice: a starting
point for GRPO.

Held-out validation ({num_val} prompts, never trained on):

| metric | value |
| --- | --- |
| greedy exact match | {metrics["greedy_accuracy"]:.3f} |
| sampled exact match (T=1.0, no top-k/top-p, {SAMPLES_PER_PROMPT} samples/prompt) | {metrics["sampled_accuracy"]:.3f} |
| well-formed samples (digits then `<eos>`) | {metrics["well_formed"]:.3f} |
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("grpo_lightning/assets/arith-policy"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    tokenizer = build_tokenizer()
    train_rows, val_rows = load_splits(seed=args.seed)
    model = LlamaForCausalLM(model_config())
    num_params = sum(p.numel() for p in model.parameters())
    print(f"{num_params:,} parameters, {len(train_rows)} train rows")

    start = time.perf_counter()
    train(
        model,
        make_examples(train_rows, tokenizer),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start

    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    metrics = evaluate(model, tokenizer, val_rows, args.seed)
    for name, value in metrics.items():
        print(f"{name}: {value:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    make_tokenizer_config_portable(args.out)
    write_model_card(
        args.out,
        metrics,
        command=" ".join(["python", *sys.argv]),
        num_params=num_params,
        num_val=len(val_rows),
        seconds=seconds,
    )
    print(f"saved to {args.out} ({seconds:.0f} s of training)")


if __name__ == "__main__":
    main()
