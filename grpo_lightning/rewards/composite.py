"""Weighted sum of named reward functions, with the checks that keep a bad reward loud."""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import signal
import threading
import warnings
from typing import Any, Iterator, Optional, Protocol, Sequence

import torch

from grpo_lightning.config import ConfigError, RewardConfig, import_object
from grpo_lightning.types import RewardScores


class RewardFunction(Protocol):
    def __call__(
        self, prompts: list[str], completions: list[str], **columns: list[Any]
    ) -> Sequence[Optional[float]]: ...


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message says which."""


class WeightedReward:
    """Calls each named function on a batch and combines them: total = sum_k w_k * r_k."""

    def __init__(
        self,
        functions: dict[str, tuple[RewardFunction, float]],
        non_finite: str = "error",
        timeout_s: Optional[float] = None,
    ):
        if not functions:
            raise ConfigError("reward.functions is empty; add at least one reward function")
        if non_finite not in ("error", "zero"):
            raise ConfigError(f"reward.non_finite={non_finite!r} is unknown; choose error or zero")
        self.functions = functions
        self._device = torch.device("cpu")
        self.non_finite = non_finite
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> "WeightedReward":
        """A function is bound to its kwargs, checked first by its ``check_kwargs`` attribute where it
        has one; a class (e.g. RewardModel, which loads a model once) is instantiated with them and
        the instance is the function."""
        functions = {}
        for name, spec in cfg.functions.items():
            fn = import_object(spec.fn, f"reward.functions.{name}.fn")
            if not callable(fn):
                raise ConfigError(f"reward.functions.{name}.fn={spec.fn!r} is not callable")
            if isinstance(fn, type):
                try:
                    fn = fn(**spec.kwargs)
                except TypeError as error:
                    raise ConfigError(f"reward.functions.{name}.kwargs do not fit {spec.fn}: {error}") from None
            elif spec.kwargs:
                _check_kwarg_names(name, fn, spec.kwargs)
                check = getattr(fn, "check_kwargs", None)  # a function may say which kwargs it can use
                if check is not None:
                    try:
                        check(**spec.kwargs)
                    except (ValueError, TypeError) as error:
                        raise ConfigError(f"reward.functions.{name}.kwargs: {error}") from None
                fn = functools.partial(fn, **spec.kwargs)
            functions[name] = (fn, float(spec.weight))
        return cls(functions, non_finite=cfg.non_finite, timeout_s=cfg.timeout_s)

    @property
    def names(self) -> list[str]:
        return list(self.functions)

    def to(self, device: torch.device | str) -> "WeightedReward":
        """Move functions that hold a model (those with a ``to`` method) to ``device``."""
        device = torch.device(device)
        if device != self._device:
            for fn, _ in self.functions.values():
                if callable(getattr(fn, "to", None)):
                    fn.to(device)
            self._device = device
        return self

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        columns: dict[str, list[Any]],
        device: torch.device | str = "cpu",
    ) -> RewardScores:
        self.to(device)  # learned rewards run where the policy does
        total = torch.zeros(len(completions), dtype=torch.float32)
        per_function, applicable, non_finite = {}, {}, {}
        for name, (fn, weight) in self.functions.items():
            with _time_limit(self.timeout_s):
                try:
                    values = self._call_one(name, fn, prompts, completions, columns, self.non_finite == "zero")
                except _Expired:
                    raise RewardError(
                        f"reward function {name!r} did not return within {self.timeout_s} s (reward.timeout_s) "
                        f"on a batch of {len(completions)} completions; find what it waits for, or raise "
                        "reward.timeout_s (null: no limit)"
                    ) from None
            if self.non_finite == "zero":
                non_finite[name] = sum(v is not None and not math.isfinite(float(v)) for v in values)
                values = [0.0 if v is not None and not math.isfinite(float(v)) else v for v in values]
            mask = torch.tensor([v is not None for v in values])
            scores = torch.tensor([0.0 if v is None else float(v) for v in values], dtype=torch.float32)
            total += weight * scores
            per_function[name], applicable[name] = scores.to(device), mask.to(device)
        weights = {name: weight for name, (_, weight) in self.functions.items()}
        return RewardScores(total.to(device), per_function, applicable, non_finite, weights=weights)

    @staticmethod
    def _call_one(
        name: str,
        fn: RewardFunction,
        prompts: list[str],
        completions: list[str],
        columns: dict[str, list[Any]],
        allow_non_finite: bool = False,
    ) -> list[Optional[float]]:
        try:
            values = list(fn(prompts, completions, **columns))
        except Exception as error:
            raise RewardError(_describe_failure(name, fn, prompts, completions, columns, error)) from error
        except SystemExit as stop:  # the run would otherwise end without a word
            raise RewardError(
                f"reward function {name!r} called sys.exit({stop.code!r}); a reward function must "
                "return its values (raise an exception to stop the run with a message)"
            ) from None
        if len(values) != len(completions):
            raise RewardError(
                f"reward function {name!r} returned {len(values)} values for "
                f"{len(completions)} completions; it must return one per completion"
            )
        for index, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, (str, bytes)):  # float("1") would take it, and hide a bug
                raise RewardError(
                    f"reward function {name!r} returned the string {value!r} for prompt {prompts[index]!r}; "
                    "return a float or None"
                )
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise RewardError(
                    f"reward function {name!r} returned {value!r} ({type(value).__name__}) "
                    f"for prompt {prompts[index]!r}; return a float or None"
                ) from None
            if not math.isfinite(number) and not allow_non_finite:
                raise RewardError(
                    f"reward function {name!r} returned {number} for prompt "
                    f"{prompts[index]!r}; rewards must be finite (or set "
                    "reward.non_finite=zero to score such completions 0)"
                )
            if math.isfinite(number) and abs(number) > FLOAT32_MAX:
                raise RewardError(
                    f"reward function {name!r} returned {number} for prompt {prompts[index]!r}, beyond "
                    f"float32's range (+-{FLOAT32_MAX:.3g}) in which rewards are summed; scale it down"
                )
        if values and all(value is None for value in values) and name not in _WARNED_ALL_NONE:
            _WARNED_ALL_NONE.add(name)
            warnings.warn(
                f"reward function {name!r} returned None (not applicable) for every completion of a batch: "
                "it adds nothing to the reward there; check that it receives the columns it reads",
                stacklevel=2,
            )
        return values


_WARNED_ALL_NONE: set[str] = set()  # once per function and process

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class _Expired(BaseException):
    """Raised into a reward function by the timer; a BaseException, so that the function's own
    ``except Exception`` (and ours around it) does not take it for the function's failure."""


@contextlib.contextmanager
def _time_limit(seconds: Optional[float]) -> Iterator[None]:
    """Raise :class:`_Expired` in this thread after ``seconds`` (SIGALRM: the main thread, POSIX)."""
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Expired

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_kwarg_names(name: str, fn: Any, kwargs: dict[str, Any]) -> None:
    """A config kwarg must name one of the function's own parameters: under the TRL contract its
    ``**columns`` would take a misspelt one silently, and the default would apply."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C function: nothing to check
        return
    named = [p for p, spec in parameters.items() if spec.kind not in (spec.VAR_POSITIONAL, spec.VAR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(named))
    if unknown:
        verb = "is not a parameter" if len(unknown) == 1 else "are not parameters"
        raise ConfigError(
            f"reward.functions.{name}.kwargs: {', '.join(unknown)} {verb} of "
            f"{getattr(fn, '__qualname__', fn)} (its parameters: {', '.join(named)})"
        )


def _describe_failure(
    name: str,
    fn: RewardFunction,
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
    error: Exception,
) -> str:
    """Find the first completion the function fails on alone, to name its prompt."""
    for index in range(len(completions)):
        try:
            fn(
                prompts[index : index + 1],
                completions[index : index + 1],
                **{key: values[index : index + 1] for key, values in columns.items()},
            )
        except Exception as single_error:
            return (
                f"reward function {name!r} raised {type(single_error).__name__}: {single_error} "
                f"on prompt {prompts[index]!r} with completion {completions[index]!r}"
            )
    return f"reward function {name!r} raised {type(error).__name__}: {error} on a batch of {len(completions)}"
