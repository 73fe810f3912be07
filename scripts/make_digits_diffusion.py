"""Train the diffusion model and the reward classifier shipped in ``grpo_lightning/assets/digits-diffusion``.

Both learn from scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn, no
download), pixels scaled from 0..16 to [-1, 1]:

* the policy: an unconditional DDPM (grpo_lightning/policy/diffusion.py) trained with the
  simple noise-prediction loss (Ho et al. 2020, eq. 14) on every image;
* the reward model: a one-hidden-layer classifier (grpo_lightning/data/tasks/digits.py) trained on
  the images of a fixed 80% split, its accuracy on the other 20% written to the model card.

The card also records what the pre-trained model draws: how often the classifier calls its
samples each digit, and their mean probability of a 3 (the reward of experiment=digits_diffusion).

Usage (needs scikit-learn: ``pip install scikit-learn``)::

    python scripts/make_digits_diffusion.py [--out DIR] [--steps N]
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from grpo_lightning.data.tasks.digits import CLASSIFIER_FILE, DigitClassifier
from grpo_lightning.policy.diffusion import DiffusionPolicy

SEED = 0
SAMPLES = 1024


def load_images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 8.0 - 1.0  # [1797, 8, 8] in [-1, 1]
    return images, torch.tensor(digits.target)


def train_diffusion(images: torch.Tensor, steps: int, batch_size: int = 256) -> DiffusionPolicy:
    policy = DiffusionPolicy(image_shape=(8, 8), num_steps=20, hidden_size=256)
    optimizer = torch.optim.AdamW(policy.denoiser.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    data = images.view(len(images), -1)
    for step in range(steps):
        x0 = data[torch.randint(len(data), (batch_size,))]
        t = torch.randint(1, policy.num_steps + 1, (batch_size,))
        noise = torch.randn_like(x0)
        alphabar = policy.alphabar[t - 1].unsqueeze(1)
        x_t = alphabar.sqrt() * x0 + (1 - alphabar).sqrt() * noise
        loss = (policy.denoiser(x_t, t) - noise).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 2000 == 0 or step == steps - 1:
            print(f"diffusion step {step}: loss {loss.item():.4f}", flush=True)
    return policy


def train_classifier(images: torch.Tensor, labels: torch.Tensor) -> tuple[DigitClassifier, float]:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SEED))
    split = int(0.8 * len(images))
    train, held_out = order[:split], order[split:]
    classifier = DigitClassifier()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(3000):
        rows = train[torch.randint(len(train), (128,))]
        loss = nn.functional.cross_entropy(classifier(images[rows]), labels[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (classifier(images[held_out]).argmax(dim=1) == labels[held_out]).float().mean().item()
    return classifier.eval(), accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "grpo_lightning/assets/digits-diffusion")
    )
    parser.add_argument("--steps", type=int, default=20_000)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    started = time.perf_counter()
    images, labels = load_images()
    classifier, accuracy = train_classifier(images, labels)
    policy = train_diffusion(images, args.steps)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        probabilities = classifier(policy.sample_images(SAMPLES, seed=SEED)).softmax(dim=1)  # [N, 10]
    shares = torch.bincount(probabilities.argmax(dim=1), minlength=10).float() / SAMPLES
    out = Path(args.out)
    policy.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, out / CLASSIFIER_FILE)
    share_row = " | ".join(f"{share:.3f}" for share in shares.tolist())
    (out / "README.md").write_text(
        f"""# digits-diffusion: a DDPM of 8x8 digits, and the classifier that rewards it

Produced by `scripts/make_digits_diffusion.py`; do not edit by hand.

- Command: `python scripts/make_digits_diffusion.py --steps {args.steps}`
- Date: {datetime.date.today().isoformat()} (both models took {seconds:.0f} s on CPU)
- Data: scikit-learn's `load_digits()` (1797 images, 8x8, pixels 0..16 scaled to [-1, 1])
- Policy: `DiffusionPolicy(image_shape=(8, 8), num_steps=20, hidden_size=256)`, unconditional,
  cosine schedule, noise-prediction loss on every image ({sum(p.numel() for p in policy.denoiser.parameters()):,}
  parameters, `config.json`, `model.safetensors`)
- Reward model: `DigitClassifier()` (`{CLASSIFIER_FILE}`), trained on a fixed 80% of the images;
  accuracy on the other 20%: {accuracy:.3f}

What the pre-trained model draws ({SAMPLES} samples, seed {SEED}), as the classifier sees it:

| digit | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| share of samples | {share_row} |

Mean probability of a 3 (the reward of `experiment=digits_diffusion`): {probabilities[:, 3].mean().item():.3f}
"""
    )
    print(f"wrote {out}: classifier accuracy {accuracy:.3f}, mean p(3) {probabilities[:, 3].mean().item():.3f}")


if __name__ == "__main__":
    main()
