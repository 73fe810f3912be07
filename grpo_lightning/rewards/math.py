"""``math_answer``: the completion's final answer, compared numerically with the reference.

The final answer is, in order of preference: the last ``\\boxed{...}``, the text after the last
``####`` (GSM8K's marker), the content of the last ``<answer>...</answer>``, else the last number
in the completion. The reference may itself be a GSM8K solution (``... #### 42``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Optional

from grpo_lightning.rewards.messages import Conversation, completion_text

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None.

    >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{12") is None
    True
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 0, start + len("\\boxed{")
    for index in range(begin, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            if depth == 0:
                return text[begin:index]
            depth -= 1
    return None


def final_answer(text: str) -> Optional[str]:
    """The answer part of a completion or reference (see the module docstring), or None.

    >>> final_answer("Natalia sold 48/2 = 24 clips in May. #### 72")
    '72'
    >>> final_answer("<think>3 + 4</think><answer>7</answer>")
    '7'
    >>> final_answer("no digits here") is None
    True
    """
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    if "####" in text:
        return text.rsplit("####", 1)[1].strip()
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def parse_number(text: str) -> Optional[Fraction]:
    """The number in an answer string, exactly, or None if it holds none.

    Thousands separators, ``$``, ``%``, units after the number and a trailing period are
    ignored; ``a/b`` and ``\\frac{a}{b}`` are fractions.

    >>> parse_number("$1,234.50")
    Fraction(2469, 2)
    >>> parse_number("-3/4")
    Fraction(-3, 4)
    >>> parse_number(r"\\frac{1}{3}")
    Fraction(1, 3)
    >>> parse_number("18 dollars.")
    Fraction(18, 1)
    >>> parse_number("seven") is None
    True
    """
    text = _FRAC.sub(r"(\1)/(\2)", text).replace("$", "").replace("\\!", "").replace("−", "-")
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,234 -> 1234 (thousands separators only)
    match = re.search(r"(-?)\(?\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*\)?(?:\s*/\s*\(?\s*(-?\d+(?:\.\d+)?)\s*\)?)?", text)
    if match is None:
        return None
    sign, numerator, denominator = match.groups()
    value = Fraction(numerator)
    if denominator is not None:
        if Fraction(denominator) == 0:
            return None
        value /= Fraction(denominator)
    return -value if sign else value


def answers_match(completion: str, reference: str, rel_tol: float = 1e-6) -> bool:
    """Whether the completion's final answer equals the reference's, numerically.

    A reference that is not a number is compared as text (whitespace and case ignored).

    >>> answers_match("The total is 1,234.", "#### 1234")
    True
    >>> answers_match(r"\\boxed{-5}", "-5.0")
    True
    >>> answers_match("I think 41", "42")
    False
    """
    predicted = final_answer(completion)
    if predicted is None:
        return False
    expected_text = final_answer(reference) if "####" in reference or "\\boxed{" in reference else reference
    expected = parse_number(expected_text or "")
    if expected is None:
        return " ".join(predicted.lower().split()) == " ".join((expected_text or "").lower().split())
    value = parse_number(predicted)
    if value is None:
        return False
    return math.isclose(float(value), float(expected), rel_tol=rel_tol, abs_tol=1e-9)


def math_answer(
    prompts: list[Conversation],
    completions: list[Conversation],
    answer: list[Any],
    *,
    rel_tol: float = 1e-6,
    **columns: Any,
) -> list[Optional[float]]:
    """1.0 where the completion's final answer equals the reference ``answer``, else 0.0.

    Rows without a reference (``None``) are not applicable (None). A message-list completion is
    read from its last assistant message.

    >>> math_answer(["q"] * 4, ["So 3 + 4 = 7. #### 7", r"\\boxed{7}", "It is 8", "no idea"],
    ...             answer=["#### 7"] * 4)
    [1.0, 1.0, 0.0, 0.0]
    """
    return [
        None if reference is None else float(answers_match(completion_text(completion), str(reference), rel_tol))
        for completion, reference in zip(completions, answer, strict=True)
    ]
