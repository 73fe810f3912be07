"""Two-digit addition: the built-in verifiable task.

Every problem is ``a+b=`` with ``a`` and ``b`` in 10..99; the completion is the
decimal sum, e.g. ``"12+34="`` -> ``"46"``. The reward is exact match, so the
task needs no judge model and runs anywhere.

The shipped warm-start policy (``grpo_lightning/assets/arith-policy``) is a tiny
Llama decoder trained from scratch by ``scripts/make_arith_checkpoint.py`` with
supervised next-token prediction on the training split only. In 60% of its
training examples the label's last digit was systematically wrong, replaced by
``(d + 1) % 10``. The policy therefore learned addition but puts roughly 60% of
its mass on the shifted last digit: the correct answer is often *sampled* yet
rarely the *greedy* choice. That is the regime GRPO is built for -- it sharpens
what a policy can already sample -- so the policy goes from a low greedy
accuracy to near-perfect within minutes of GRPO on a CPU.
"""

from __future__ import annotations

import random

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, PreTrainedTokenizerFast

ALPHABET = "0123456789+="
"""Every character that can appear in a prompt or a completion."""

_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
_OPERAND_RANGE = range(10, 100)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer: special tokens first (ids 0-3), then ``ALPHABET``.

    Encoding prepends ``<bos>``; padding is on the left so that batched prompts
    all end where generation starts.
    """
    vocab = {token: i for i, token in enumerate((*_SPECIAL_TOKENS, *ALPHABET))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A",
        pair="<bos> $A $B",
        special_tokens=[("<bos>", vocab["<bos>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


def model_config() -> LlamaConfig:
    """Return the config of the warm-start policy: a ~0.66M-parameter Llama decoder."""
    tokenizer = build_tokenizer()
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def load_splits(num_val: int = 200, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Return disjoint ``(train, val)`` rows ``{"prompt": "12+34=", "answer": "46"}``.

    All 8100 problems are shuffled with ``seed`` and the last ``num_val`` are held out.
    """
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in _OPERAND_RANGE for b in _OPERAND_RANGE]
    return _hold_out(rows, num_val, seed)


def _hold_out(rows: list[dict], num_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``rows`` shuffled with ``seed``, the last ``num_val`` held out for validation."""
    if not 0 < num_val < len(rows):
        raise ValueError(f"num_val must be between 1 and {len(rows) - 1}, got {num_val}")
    random.Random(seed).shuffle(rows)
    return rows[:-num_val], rows[-num_val:]


CHAT_QUESTION = "Calculate {a}+{b}. Reply with just the result."
"""How :func:`load_chat_splits` asks for a sum: a question for an instruct model's chat template."""


def load_chat_splits(
    num_val: int = 64, seed: int = 0, question: str = CHAT_QUESTION, low: int = 10, high: int = 49
) -> tuple[list[dict], list[dict]]:
    """Addition asked as chat questions, for instruct models (with ``data.apply_chat_template=true``;
    ``rewards.math.math_answer`` reads the reply's last number): every ``a+b`` with ``a`` and ``b``
    in ``low..high``, shuffled with ``seed``, the last ``num_val`` held out. The default range keeps
    sums below 100, where a 135M instruct model is right often enough for group-relative signal
    (benchmarks/RESULTS.md, "The real-model task").

    >>> train, val = load_chat_splits(num_val=4)
    >>> len(train), val[0]["prompt"].startswith("Calculate ")
    (1596, True)
    """
    if "{a}" not in question or "{b}" not in question:
        raise ValueError(f"question must contain {{a}} and {{b}}, got {question!r}")
    operands = range(low, high + 1)
    rows = [{"prompt": question.format(a=a, b=b), "answer": str(a + b)} for a in operands for b in operands]
    return _hold_out(rows, num_val, seed)


def correct_answer(prompts: list[str], completions: list[str], answer: list[str], **columns: object) -> list[float]:
    """Exact-match reward: 1.0 where the stripped completion equals the answer, else 0.0.

    Follows the TRL reward contract ``fn(prompts, completions, **dataset_columns)``.

    >>> correct_answer(["12+34=", "12+34="], ["46", " 47"], answer=["46", "46"])
    [1.0, 0.0]
    >>> correct_answer(["12+34="], ["46"], answer=[46])  # answers read from a file as numbers
    [1.0]
    """
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]
