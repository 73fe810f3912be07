"""Weighted sum of named reward functions, with the checks that keep a bad reward loud."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
import signal
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Iterator, Optional, Protocol, Sequence

import torch

from grpo_lightning.config import ConfigError, RewardConfig, import_object
from grpo_lightning.rewards.messages import Conversation, quoted
from grpo_lightning.types import RewardScores


class RewardFunction(Protocol):
    """``fn(prompts=..., completions=..., **columns, **extras) -> values``, one float or None per
    completion; the package docstring (grpo_lightning.rewards) says exactly how it is called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Sequence[Optional[float]]: ...


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message says which."""


# The keyword arguments every call offers besides the dataset columns and the caller's context.
_CALL_ARGUMENTS = frozenset({"prompts", "completions", "completion_ids", "log_extra", "log_metric"})


class WeightedReward:
    """Calls each named function on a batch and combines them: total = sum_k w_k * r_k."""

    def __init__(
        self,
        functions: dict[str, tuple[RewardFunction, float]],
        non_finite: str = "error",
        timeout_s: Optional[float] = None,
    ):
        if not functions:
            raise ConfigError(
                "reward.functions is empty; add at least one reward function (or use an agent environment "
                "with a get_reward method, agent.environment, which adds its own)"
            )
        if non_finite not in ("error", "zero"):
            raise ConfigError(f"reward.non_finite={non_finite!r} is unknown; choose error or zero")
        self.functions = functions
        self._shapes = {name: _call_shape(fn) for name, (fn, _) in functions.items()}
        self._device = torch.device("cpu")
        self.non_finite = non_finite
        self.timeout_s = timeout_s
        self._background: Optional[_BackgroundLoop] = None  # started by the first async function's call

    @classmethod
    def from_config(
        cls, cfg: RewardConfig, added: Optional[dict[str, RewardFunction]] = None, added_weight: float = 1.0
    ) -> "WeightedReward":
        """A function is bound to its kwargs, checked first by its ``check_kwargs`` attribute where it
        has one; a class (e.g. RewardModel, which loads a model once) is instantiated with them and
        the instance is the function. ``added``: more functions, ``added_weight`` each (an agent
        environment's own reward, policy/agent/environments.py)."""
        functions = {name: (fn, added_weight) for name, fn in (added or {}).items()}
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
            if name in functions:
                raise ConfigError(
                    f"reward.functions.{name}: the agent's environment adds a reward of that name (its "
                    "get_reward); rename the reward function"
                )
            functions[name] = (fn, float(spec.weight))
        return cls(functions, non_finite=cfg.non_finite, timeout_s=cfg.timeout_s)

    def add_functions(self, functions: dict[str, RewardFunction], weight: float = 1.0) -> None:
        """Add functions of ``weight`` that are not here yet (by name): an agent environment's own
        reward, which GRPOModule adds so that it is never left out."""
        for name, fn in functions.items():
            if name not in self.functions:
                self.functions[name] = (fn, weight)
                self._shapes[name] = _call_shape(fn)

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
        prompts: list[Conversation],
        completions: list[Conversation],
        columns: dict[str, list[Any]],
        device: torch.device | str = "cpu",
        *,
        completion_ids: Optional[list[list[int]]] = None,
        context: Optional[dict[str, Any]] = None,
        turns: Optional[list[int]] = None,
    ) -> RewardScores:
        """Score a batch: ``prompts`` [B] and ``completions`` [B] (texts or message lists), every
        dataset column [B]; ``completion_ids`` [B] the sampled token ids; ``context`` further keyword
        arguments (e.g. ``trainer_state``, or ``environments`` [B] of a multi-turn rollout); ``turns``
        [B] the assistant turns of each episode of a multi-turn rollout, where a function may return
        one reward per turn (the package docstring)."""
        self.to(device)  # learned rewards run where the policy does
        batch = _Batch(prompts, completions, columns, _extras(completions, columns, completion_ids, context))
        logs = _Logs()
        values = {
            name: self._call_sync(name, fn, batch, logs)
            for name, (fn, _) in self.functions.items()
            if not self._shapes[name].is_async
        }
        values |= self._call_async([name for name in self.functions if self._shapes[name].is_async], batch, logs)
        total = torch.zeros(len(completions), dtype=torch.float32)
        per_function, applicable, non_finite = {}, {}, {}
        turn_parts: list[list[float]] = [[0.0] * n for n in turns] if turns is not None else []  # [B][turns]
        outcome_parts = [0.0] * len(completions)  # [B] what the functions returned per episode, weighted
        any_per_turn = False
        for name, (_, weight) in self.functions.items():  # in the configured order, async ones included
            function_values = self._checked(name, values[name], batch, turns)
            if self.non_finite == "zero":
                non_finite[name] = sum(_count_non_finite(v) for v in function_values)
                function_values = [_zero_non_finite(v) for v in function_values]
            for row, value in enumerate(function_values):
                if isinstance(value, list):
                    any_per_turn = True
                    turn_parts[row] = [part + weight * turn for part, turn in zip(turn_parts[row], value)]
                elif value is not None:
                    outcome_parts[row] += weight * value
            mask = torch.tensor([v is not None for v in function_values])
            scores = torch.tensor([_episode_value(v) for v in function_values], dtype=torch.float32)
            total += weight * scores
            per_function[name], applicable[name] = scores.to(device), mask.to(device)
        weights = {name: weight for name, (_, weight) in self.functions.items()}
        logged_metrics, extra_columns = _logged(logs, self.names, len(completions))
        turn_rewards = None
        if any_per_turn:  # the episode rewards on the last turn
            turn_rewards = [[*parts[:-1], parts[-1] + outcome] for parts, outcome in zip(turn_parts, outcome_parts)]
        return RewardScores(
            total.to(device),
            per_function,
            applicable,
            non_finite,
            weights=weights,
            logged_metrics=logged_metrics,
            extra_columns=extra_columns,
            turn_rewards=turn_rewards,
        )

    def _call_sync(self, name: str, fn: RewardFunction, batch: _Batch, logs: _Logs) -> list[Any]:
        shape = self._shapes[name]
        _check_required(name, shape, batch)
        with _time_limit(self.timeout_s):
            try:
                try:
                    return list(_invoke(fn, shape, batch, logs.for_function(name)))
                except Exception as error:
                    rerun = functools.partial(_invoke, fn, shape, logging=_Logs().for_function(name))
                    raise RewardError(_describe_failure(name, error, batch, rerun)) from error
                except SystemExit as stop:  # the run would otherwise end without a word
                    raise RewardError(_exit_message(name, stop)) from None
            except _Expired:
                raise RewardError(_timeout_message(name, self.timeout_s, len(batch.completions))) from None

    def _call_async(self, names: list[str], batch: _Batch, logs: _Logs) -> dict[str, list[Any]]:
        """Await the async functions together, each under the time limit, on the private loop."""
        if not names:
            return {}
        for name in names:
            _check_required(name, self._shapes[name], batch)

        async def settle(name: str) -> Any:
            """The function's values, or what it raised, or _Expired: one failure does not cut the others short."""

            async def values() -> Any:
                fn, _ = self.functions[name]
                try:
                    return list(await _invoke(fn, self._shapes[name], batch, logs.for_function(name)))
                except (Exception, SystemExit) as error:
                    return error  # anything asyncio.wait_for raises after this is the time limit's

            try:
                return await asyncio.wait_for(values(), self.timeout_s)
            except asyncio.TimeoutError:
                return _Expired()

        async def gather() -> list[Any]:
            return await asyncio.gather(*(settle(name) for name in names))

        background = self._background_loop()
        outcomes = dict(zip(names, background.run(gather()), strict=True))
        for name, outcome in outcomes.items():
            if isinstance(outcome, _Expired):
                raise RewardError(_timeout_message(name, self.timeout_s, len(batch.completions)))
            if isinstance(outcome, SystemExit):
                raise RewardError(_exit_message(name, outcome))
            if isinstance(outcome, Exception):
                rerun = functools.partial(self._await_one, name)
                raise RewardError(_describe_failure(name, outcome, batch, rerun)) from outcome
        return outcomes

    def _await_one(self, name: str, batch: _Batch) -> Any:
        """One async function on its own, under the time limit (to find the row a failure comes from)."""
        fn, _ = self.functions[name]
        coroutine = _invoke(fn, self._shapes[name], batch, _Logs().for_function(name))
        return self._background_loop().run(asyncio.wait_for(coroutine, self.timeout_s))

    def _background_loop(self) -> _BackgroundLoop:
        with _BACKGROUND_LOCK:
            if self._background is None:
                self._background = _BackgroundLoop()
                weakref.finalize(self, self._background.stop)
            return self._background

    def _checked(
        self, name: str, values: list[Any], batch: _Batch, turns: Optional[list[int]]
    ) -> list[Optional[float | list[float]]]:
        """The function's values (a list of per-turn numbers where ``turns`` allows one), refused
        loudly where they cannot be rewards."""
        prompts, completions = batch.prompts, batch.completions
        if len(values) != len(completions):
            raise RewardError(
                f"reward function {name!r} returned {len(values)} values for "
                f"{len(completions)} completions; it must return one per completion"
            )
        checked: list[Optional[float | list[float]]] = []
        for index, value in enumerate(values):
            if value is None:
                checked.append(None)
            elif isinstance(value, (list, tuple)):
                if turns is None:
                    raise RewardError(
                        f"reward function {name!r} returned a list for prompt {quoted(prompts[index])}; one "
                        "reward per turn is for agent episodes only (agent.tools / agent.environment): return a float "
                        "or None"
                    )
                if len(value) != turns[index]:
                    raise RewardError(
                        f"reward function {name!r} returned {len(value)} turn rewards for an episode of "
                        f"{turns[index]} assistant turns (prompt {quoted(prompts[index])}); return one per assistant "
                        "turn, or one float for the whole episode"
                    )
                checked.append([self._number(name, turn, prompts[index]) for turn in value])
            else:
                checked.append(self._number(name, value, prompts[index]))
        if values and all(value is None for value in values) and name not in _WARNED_ALL_NONE:
            _WARNED_ALL_NONE.add(name)
            warnings.warn(
                f"reward function {name!r} returned None (not applicable) for every completion of a batch: "
                "it adds nothing to the reward there; check that it receives the columns it reads",
                stacklevel=2,
            )
        return checked

    def _number(self, name: str, value: Any, prompt: Conversation) -> float:
        """One reward as a float, refused loudly where it cannot be one."""
        if isinstance(value, (str, bytes)):  # float("1") would take it, and hide a bug
            raise RewardError(
                f"reward function {name!r} returned the string {value!r} for prompt {quoted(prompt)}; "
                "return a float or None"
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RewardError(
                f"reward function {name!r} returned {value!r} ({type(value).__name__}) "
                f"for prompt {quoted(prompt)}; return a float or None"
            ) from None
        if not math.isfinite(number) and self.non_finite != "zero":
            raise RewardError(
                f"reward function {name!r} returned {number} for prompt "
                f"{quoted(prompt)}; rewards must be finite (or set "
                "reward.non_finite=zero to score such completions 0)"
            )
        if math.isfinite(number) and abs(number) > FLOAT32_MAX:
            raise RewardError(
                f"reward function {name!r} returned {number} for prompt {quoted(prompt)}, beyond "
                f"float32's range (+-{FLOAT32_MAX:.3g}) in which rewards are summed; scale it down"
            )
        return number


def _count_non_finite(value: Optional[float | list[float]]) -> int:
    numbers = value if isinstance(value, list) else [] if value is None else [value]
    return sum(not math.isfinite(number) for number in numbers)


def _zero_non_finite(value: Optional[float | list[float]]) -> Optional[float | list[float]]:
    """``reward.non_finite=zero``: NaN or inf scored 0 (each turn's on its own)."""
    if isinstance(value, list):
        return [number if math.isfinite(number) else 0.0 for number in value]
    return value if value is None or math.isfinite(value) else 0.0


def _episode_value(value: Optional[float | list[float]]) -> float:
    """A function's reward of one episode: its turns' sum; 0 where not applicable."""
    if value is None:
        return 0.0
    return math.fsum(value) if isinstance(value, list) else value


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


@dataclass(frozen=True)
class _CallShape:
    """How one reward function is called, read once from its signature."""

    by_keyword: bool  # TRL's call fn(prompts=..., completions=..., ...); else our old fn(prompts, completions, ...)
    accepts: Optional[frozenset[str]]  # the keyword arguments it can take besides the columns; None: any (**kwargs)
    required: frozenset[str]  # keyword parameters without a default, named in the error when a call lacks one
    is_async: bool  # returns a coroutine: awaited with the other async functions


def _call_shape(fn: Any) -> _CallShape:
    """Read how to call ``fn``: by keyword, as TRL does, unless it was written for our old positional
    call, fn(prompts, completions, **columns), with other names: that is, unless it has no
    ``completions`` parameter it can take by keyword and does take two positional arguments.

    >>> _call_shape(lambda completions, **kwargs: []).by_keyword
    True
    >>> _call_shape(lambda p, c, answer: []).by_keyword, _call_shape(lambda p, c, answer: []).accepts
    (False, frozenset({'answer'}))
    """
    is_async = _is_async(fn)
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: called as before, with the columns only
        return _CallShape(by_keyword=False, accepts=frozenset(), required=frozenset(), is_async=is_async)
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    positional_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in parameters if p.kind in positional_kinds]
    takes_two_positional = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
    keywords = [p for p in parameters if p.kind in keyword_kinds]
    by_keyword = any(p.name == "completions" for p in keywords) or not takes_two_positional
    if not by_keyword:  # its first two parameters take the prompts and completions
        keywords = [p for p in keywords if p.name not in positional[:2]]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters)
    return _CallShape(
        by_keyword=by_keyword,
        accepts=None if takes_any else frozenset(p.name for p in keywords),
        required=frozenset(p.name for p in keywords if p.default is p.empty) if by_keyword else frozenset(),
        is_async=is_async,
    )


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def``, a partial of one, or an object whose
    ``__call__`` is one (which inspect.iscoroutinefunction alone does not see)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


@dataclass(frozen=True)
class _Batch:
    """What one call hands the reward functions."""

    prompts: list[Conversation]  # [B]
    completions: list[Conversation]  # [B]
    columns: dict[str, list[Any]]  # name -> [B], the dataset's
    extras: dict[str, Any]  # completion_ids [B] and the caller's context

    def row(self, index: int) -> "_Batch":
        """The one-row batch of ``index``: extras that are lists of one value per completion are cut too."""
        rows = len(self.completions)

        def cut(values: Any) -> Any:
            return values[index : index + 1] if isinstance(values, list) and len(values) == rows else values

        return _Batch(
            self.prompts[index : index + 1],
            self.completions[index : index + 1],
            {key: values[index : index + 1] for key, values in self.columns.items()},
            {key: cut(values) for key, values in self.extras.items()},
        )

    def arguments(self, shape: _CallShape, logging: dict[str, Callable]) -> tuple[tuple, dict[str, Any]]:
        """The positional and keyword arguments of one function's call: every column, and of the rest
        only what the function accepts, so that a function without ``**kwargs`` is not offered extras."""
        offered = {**self.extras, **logging}
        if shape.by_keyword:
            positional, offered = (), {"prompts": self.prompts, "completions": self.completions, **offered}
        else:
            positional = (self.prompts, self.completions)
        accepted = {key: value for key, value in offered.items() if shape.accepts is None or key in shape.accepts}
        return positional, {**self.columns, **accepted}


def _invoke(fn: RewardFunction, shape: _CallShape, batch: _Batch, logging: dict[str, Callable]) -> Any:
    positional, keywords = batch.arguments(shape, logging)
    return fn(*positional, **keywords)


def _extras(
    completions: list[Conversation],
    columns: dict[str, list[Any]],
    completion_ids: Optional[list[list[int]]],
    context: Optional[dict[str, Any]],
) -> dict[str, Any]:
    """completion_ids and the context as keyword arguments, refused where a name would be ambiguous."""
    context = dict(context or {})
    taken = sorted(set(context) & _CALL_ARGUMENTS)
    if taken:
        raise RewardError(f"context keys {taken} are arguments WeightedReward passes itself; rename them")
    extras = context
    if completion_ids is not None:
        if len(completion_ids) != len(completions):
            raise RewardError(
                f"completion_ids has {len(completion_ids)} rows for {len(completions)} completions; "
                "give one per completion"
            )
        extras["completion_ids"] = completion_ids
    clashes = sorted(set(columns) & (_CALL_ARGUMENTS | set(extras)))
    if clashes:
        raise RewardError(
            f"dataset columns {clashes} have the names of arguments every reward function may be "
            f"offered ({', '.join(sorted(_CALL_ARGUMENTS | set(extras)))}); rename those columns"
        )
    return extras


def _check_required(name: str, shape: _CallShape, batch: _Batch) -> None:
    """A parameter this call cannot fill is named here, rather than as a TypeError from inside the call."""
    offered = {"prompts", "completions", "log_extra", "log_metric"} | set(batch.columns) | set(batch.extras)
    missing = sorted(shape.required - offered)
    if missing:
        raise RewardError(
            f"reward function {name!r} needs {', '.join(missing)}, which this call does not pass "
            f"(dataset columns: {', '.join(sorted(batch.columns)) or 'none'}; from the caller: "
            f"{', '.join(sorted(batch.extras)) or 'nothing'}); add the column to the data, or bind it in "
            "reward.functions.<name>.kwargs"
        )


class _Logs:
    """What the functions log in one call, through the ``log_extra`` and ``log_metric`` they are given."""

    def __init__(self) -> None:
        self.columns: list[tuple[str, Any, Any]] = []  # (function, column, values)
        self.metrics: list[tuple[str, Any, Any]] = []  # (function, metric, value)

    def for_function(self, function: str) -> dict[str, Callable]:
        """TRL's two callables, recording which function logged what; checked when the call ends, so
        that a function's own ``except Exception`` cannot swallow the error."""

        def log_extra(column: str, values: list) -> None:
            self.columns.append((function, column, values))

        def log_metric(name: str, value: float) -> None:
            self.metrics.append((function, name, value))

        return {"log_extra": log_extra, "log_metric": log_metric}


def _logged(logs: _Logs, function_names: list[str], rows: int) -> tuple[dict[str, float], dict[str, list[Any]]]:
    """The metrics (name -> mean of the values logged) and table columns (name -> [rows]) of one call."""
    columns: dict[str, list[Any]] = {}
    for function, column, values in logs.columns:
        _check_log_name(function, "log_extra", "column", column, function_names)
        if column in columns:
            raise RewardError(
                f"reward function {function!r} logged the column {column!r} (log_extra) which this call already has; "
                "log each column once per call"
            )
        if not isinstance(values, (list, tuple)) or len(values) != rows:
            given = f"{len(values)} values" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
            raise RewardError(
                f"reward function {function!r} logged {given} for the column {column!r} (log_extra); "
                f"give a list of one value per completion ({rows})"
            )
        columns[column] = list(values)
    metrics: dict[str, list[float]] = {}
    for function, metric, value in logs.metrics:
        _check_log_name(function, "log_metric", "metric", metric, function_names)
        if isinstance(value, (str, bytes)):
            raise RewardError(f"reward function {function!r} logged the string {value!r} for the metric {metric!r}")
        try:
            metrics.setdefault(metric, []).append(float(value))
        except (TypeError, ValueError):
            raise RewardError(
                f"reward function {function!r} logged {value!r} ({type(value).__name__}) for the metric "
                f"{metric!r} (log_metric); log a number"
            ) from None
    return {metric: sum(values) / len(values) for metric, values in metrics.items()}, columns


def _check_log_name(function: str, via: str, kind: str, name: Any, function_names: list[str]) -> None:
    if not isinstance(name, str) or not name.strip():
        raise RewardError(f"reward function {function!r} logged a {kind} named {name!r} ({via}); give it a name")
    if name in function_names:  # the function's own scores are logged under its name
        raise RewardError(
            f"reward function {function!r} logged a {kind} named {name!r} ({via}), the name of a reward "
            "function, whose scores it would overwrite; choose another name"
        )


class _BackgroundLoop:
    """An event loop in a daemon thread of its own. Async reward functions run there, so that a caller
    whose thread already runs a loop (Jupyter) can wait for them: asyncio.run would refuse there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="reward-functions", daemon=True).start()

    def run(self, coroutine: Coroutine) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


_BACKGROUND_LOCK = threading.Lock()  # two threads scoring at once must not start two loops for one reward


def _timeout_message(name: str, timeout_s: Optional[float], rows: int) -> str:
    return (
        f"reward function {name!r} did not return within {timeout_s} s (reward.timeout_s) "
        f"on a batch of {rows} completions; find what it waits for, or raise "
        "reward.timeout_s (null: no limit)"
    )


def _exit_message(name: str, stop: SystemExit) -> str:
    return (
        f"reward function {name!r} called sys.exit({stop.code!r}); a reward function must "
        "return its values (raise an exception to stop the run with a message)"
    )


def _describe_failure(name: str, error: BaseException, batch: _Batch, rerun: Callable[[_Batch], Any]) -> str:
    """Find the first completion the function fails on alone (``rerun`` on one row), to name its prompt."""
    for index in range(len(batch.completions)):
        try:
            rerun(batch.row(index))
        except Exception as single_error:
            return (
                f"reward function {name!r} raised {type(single_error).__name__}: {single_error} "
                f"on prompt {quoted(batch.prompts[index])} with completion {quoted(batch.completions[index])}"
            )
    return f"reward function {name!r} raised {type(error).__name__}: {error} on a batch of {len(batch.completions)}"
