"""ToolEnv: an environment whose tools are plain Python methods.

Subclass it, write `start(seed)` and one method per tool, and every sftbc command runs it:

    class Inventory(ToolEnv):
        def start(self, seed: int) -> str:          # a new episode, the same one for the same seed
            ...
            return "Pick the order ..."             # the task, as the first user message

        def pick(self, bin: int) -> str:            # a tool: type hints and a Google-style docstring
            \"\"\"Take the item in a bin.

            Args:
                bin: the bin number
            \"\"\"
            ...
            return "picked ..."                     # the observation the model reads next (else shown as JSON)

The tools are the public methods (not starting with `_`) that a subclass defines, in definition
order, except the env API itself (`reset`, `step`, `start`, `outcome`, `oracle_action`,
`noisy_action`, `random_action`, and TRL's `get_reward`): the convention of TRL's GRPO
`environment_factory`, so a class written for TRL becomes an sftbc env by a thin subclass that adds
`start(seed)` and `outcome()`. Their JSON schemas come from `transformers.utils.get_json_schema`.

Every call is validated against its schema before the tool runs (str, int, float, bool, enums,
lists, objects, optional and nullable arguments): a malformed call is an error observation and a
wasted turn, and the tool never sees it. A tool refuses a call by raising `BadCall("error: ...")`
(its message is the observation). Any other exception raised inside a tool is caught too: the
observation is the exception's type and message, `info["tool_error"]` is set (counted as
`tool_errors` in the metrics), and the episode goes on. A tool ends the episode with
`self.finish(success)`, or a subclass overrides `outcome()`.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import re
from functools import cache

from transformers.utils import get_json_schema

from sftbc.envs.base import BadCall, StepResult, default_max_steps, tool_result
from sftbc.types import Message, tool_call

# Methods of the env API, never tools (TRL's names included, so a TRL env's reset/get_reward stay out).
RESERVED = frozenset({"reset", "step", "start", "outcome", "finish", "tools", "oracle_action", "noisy_action",
                      "random_action", "get_reward"})
MAX_ERROR_CHARS = 300  # an exception's message in an observation is cut here
_QUOTED = re.compile(r'"([^"\n]{1,40})"')
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"[A-Za-z_][\w-]{0,39}")


class ToolEnv:
    """Base class for envs whose tools are methods (module docstring). Subclasses write `start` and the
    tools; `oracle_action`, `noisy_action` and `random_action` are optional (see each)."""

    def __init__(self, horizon: int, max_steps: int | None = None):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = horizon
        self.max_steps = max_steps or default_max_steps(horizon)
        self.done = False
        self.observation = ""  # the last text the env showed (the task, then each tool's answer), error observations aside
        self._outcome: bool | None = None

    # -- what a subclass writes ----------------------------------------------------------------------
    def start(self, seed: int) -> str | list[Message]:
        """Set up the episode for `seed` (and `self.horizon`) deterministically; return the task: a string
        (the first user message) or the opening messages."""
        raise NotImplementedError(f"{type(self).__name__} must define start(seed)")

    def outcome(self) -> bool | None:
        """None while the episode goes on, else whether it succeeded; after every call. By default what a
        tool gave `finish`; a class that keeps its own end state (a TRL env's `get_reward`) overrides it."""
        return self._outcome

    def finish(self, success: bool = True):
        """Called by a tool: the episode ends after this call, with this outcome."""
        self._outcome = bool(success)

    # -- the Env protocol ------------------------------------------------------------------------------
    @classmethod
    def tools(cls) -> list[dict]:
        return [dict(s) for s in tool_schemas(cls)]

    def reset(self, seed: int) -> tuple[list[Message], list[dict]]:
        self.done, self._outcome = False, None
        opening = self.start(seed)
        messages = [Message(role="user", content=opening)] if isinstance(opening, str) else list(opening)
        self.observation = messages[-1].content
        return messages, self.tools()

    def step(self, action: Message) -> StepResult:
        if self.done:
            raise RuntimeError("step() called on a finished episode; call reset()")
        name = None
        try:
            name, args = check_call(action, tool_schemas(type(self)))
            out = getattr(self, name)(**args)
            text, info = out if isinstance(out, str) else json.dumps(out, default=str), {}
            self.observation = text
        except BadCall as e:
            text, name, info = str(e), None, {"error": str(e)}
        except Exception as e:  # the user's tool failed: an observation, not a crash
            text = f"error: {name} raised {type(e).__name__}: {e}"[:MAX_ERROR_CHARS]
            info = {"error": text, "tool_error": text}
        success = self.outcome()
        if success is not None:
            self.done = True
            info["success"] = bool(success)
        return StepResult([tool_result(text, name)], self.done, info)

    # -- default behaviours ------------------------------------------------------------------------------
    def noisy_action(self, rng) -> Message:
        """Base-pretraining behaviour (`sftbc base`): a uniformly random tool whose arguments are values the
        last observation shows (a quoted string, else a word; a number of the right type; an enum's value),
        among the tools it can fill that way;
        a draw that would end the episode is drawn again once, so that episodes get past their first turns.
        On such transcripts the tiny base learns the call format, each tool's arguments, how the tools answer
        and to copy values from observations, but no policy: which tool, and which of the shown values, is
        what fine-tuning teaches. Write your own when arguments come from elsewhere (an earlier observation,
        arithmetic) or when random calls rarely reach the states a good policy visits (the maze's follows
        a note half the time for that reason)."""
        action = self._random_call(rng)
        return self._random_call(rng) if self._try(action).done else action

    def _random_call(self, rng) -> Message:
        """A random tool among those whose arguments the last observation can fill (all of them when none
        can), its arguments drawn from it: every argument in the corpus is then a copy of a shown value."""
        tools = [t["function"] for t in tool_schemas(type(self))]
        fillable = [t for t in tools if all(_shown(t["parameters"]["properties"][p], self.observation)
                                            for p in t["parameters"].get("required", []))]
        schema = rng.choice(fillable or tools)
        props, required = schema["parameters"].get("properties", {}), schema["parameters"].get("required", [])
        return tool_call(schema["name"], **{p: _draw(props[p], self.observation, rng) for p in required})

    def _try(self, action: Message) -> StepResult:
        """What `action` would do here, on a copy of the env."""
        return copy.deepcopy(self).step(action)

    def random_action(self, rng, tries: int = 16) -> Message | None:
        """DART's perturbation: a random call as `noisy_action` draws them, that the env accepts and that does not end the episode
        (tried on a copy of the env), or None when `tries` draws find none."""
        for _ in range(tries):
            action = self._random_call(rng)
            result = self._try(action)
            if not result.done and "error" not in result.info:
                return action
        return None


@cache
def tool_schemas(cls) -> tuple[dict, ...]:
    """The tool schemas of an env class, in definition order (a base class's tools first)."""
    names = dict.fromkeys(n for klass in reversed(cls.__mro__) if klass not in (ToolEnv, object)
                          for n, v in vars(klass).items()
                          if inspect.isfunction(v) and not n.startswith("_") and n not in RESERVED)
    if not names:
        raise ValueError(f"{cls.__name__} has no tools: give it public methods with type hints and docstrings")
    out = []
    for n in names:
        fn = getattr(cls, n)
        try:
            schema = get_json_schema(fn)
        except Exception as e:  # DocstringParsingException, TypeHintParsingException: the user's to fix
            raise ValueError(f"tool {cls.__name__}.{n}: {e}") from None
        schema["function"].pop("return", None)  # what a model is shown of a tool is how to call it
        out.append(schema)
    return tuple(out)


# -- validation ------------------------------------------------------------------------------------
_KINDS = {"string": (str, "a string"), "integer": (int, "an integer"), "number": ((int, float), "a number"),
          "boolean": (bool, "true or false"), "array": (list, "a list"), "object": (dict, "an object")}


def check_call(action: Message, tools) -> tuple[str, dict]:
    """Validate an action against the tool schemas; returns (name, arguments) or raises BadCall."""
    if not action.tool_calls:
        raise BadCall("error: no tool call found; call one of the tools")
    if len(action.tool_calls) > 1:
        raise BadCall("error: make exactly one tool call per turn")
    call = action.tool_calls[0]
    schema = next((t["function"] for t in tools if t["function"]["name"] == call.name), None)
    if schema is None:
        raise BadCall(f"error: unknown tool {call.name[:40]!r}")
    props = schema["parameters"].get("properties", {})
    required = set(schema["parameters"].get("required", []))
    if not required <= set(call.arguments) <= set(props):
        want = ", ".join(sorted(required) + [f"{p} (optional)" for p in props if p not in required])
        raise BadCall(f"error: {call.name} takes {want or 'no arguments'}")
    for k, v in call.arguments.items():
        _check_value(v, props[k], k)
    return call.name, dict(call.arguments)


def _check_value(value, spec: dict, where: str):
    if value is None and spec.get("nullable"):
        return
    kinds = spec.get("type", [])
    kinds = [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k in _KINDS]
    ok = not kinds or any(isinstance(value, _KINDS[k][0]) and not (isinstance(value, bool) and k != "boolean")
                          and not (k == "number" and isinstance(value, float) and not math.isfinite(value))
                          for k in kinds)
    if not ok:
        raise BadCall(f"error: argument {where[:40]} must be {' or '.join(_KINDS[k][1] for k in kinds)}")
    if "enum" in spec and value not in spec["enum"]:
        raise BadCall(f"error: argument {where[:40]} must be one of {', '.join(map(json.dumps, spec['enum']))}")
    if isinstance(value, list) and "items" in spec:
        for i, v in enumerate(value):
            _check_value(v, spec["items"], f"{where}[{i}]")


def _kind(spec: dict) -> str:
    kinds = spec.get("type", "string")
    return kinds if isinstance(kinds, str) else next((k for k in kinds if k != "null"), "string")


def _shown(spec: dict, observation: str) -> bool:
    """Whether the observation shows a value for an argument of this schema (an enum or a bool always does)."""
    kind = _kind(spec)
    if "enum" in spec or kind in ("boolean", "object"):
        return True
    if kind == "array":
        return _shown(spec.get("items", {}), observation)
    if kind == "integer":
        return any("." not in n for n in _NUMBER.findall(observation))
    if kind == "number":
        return bool(_NUMBER.search(observation))
    return bool(_QUOTED.search(observation) or _WORD.search(observation))


def _draw(spec: dict, observation: str, rng):
    """A value of `spec`'s type, taken from the observation where it shows one."""
    if "enum" in spec:
        return rng.choice(spec["enum"])
    kind = _kind(spec)
    numbers = _NUMBER.findall(observation)
    if kind == "integer":
        ints = [int(n) for n in numbers if "." not in n]
        return rng.choice(ints) if ints else rng.randint(0, 9)
    if kind == "number":
        return float(rng.choice(numbers)) if numbers else round(rng.random(), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [_draw(spec.get("items", {}), observation, rng) for _ in range(rng.randint(1, 2))]
    if kind == "object":
        return {}
    values = _QUOTED.findall(observation) or _WORD.findall(observation)
    return rng.choice(values) if values else "x"
