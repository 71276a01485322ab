"""`ctx.llm`: the durable tool-calling loop of a model and its tools.

Each model call and each tool call is an ordinary activity, so the loop is replayed like any
workflow code: a replay reads every answer from history and never calls the model again.
Knows the provider-neutral shape of a model call (`openai-chat`, `anthropic-chat`), not any
provider's wire format, store or worker.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from pydantic import ValidationError

from loom._json import JSON, dumps, loads, type_adapter
from loom.activity import Activity
from loom.exceptions import ActivityFailedError, LLMOutputError
from loom.usage import TOKEN_KINDS

if TYPE_CHECKING:
    from loom.context import WorkflowContext

TOOLS_ACTIVITY = "loom.tools"
"""Built-in activity every worker serves: the tool definitions of registered specs, read from
the registry once and recorded, so replay sees the same tools whatever was registered since."""
DEFAULT_MODEL_ACTIVITY = "openai-chat@^1"
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Tool:
    target: Activity[..., Any] | str  # a native activity, or the registered spec to call
    definition: dict[str, JSON]  # {name, description, parameters}: what the model sees
    validator: Draft202012Validator


@dataclass(frozen=True, slots=True)
class _Output:
    schema: dict[str, JSON]
    decode: Callable[[JSON], Any]


async def run_llm(
    ctx: WorkflowContext[Any, Any],
    prompt: str | Sequence[dict[str, JSON]],
    *,
    activity: str,
    tools: Sequence[Activity[..., Any] | str],
    output: Any,
    max_turns: int,
    repair_attempts: int,
    params: dict[str, JSON],
    totals: dict[str, int],
) -> Any:
    """The loop behind `WorkflowContext.llm` (see there); adds each model call's tokens to
    `totals` (the run's `ctx.llm_usage`)."""
    if max_turns < 1 or repair_attempts < 0:
        raise ValueError(
            f"need max_turns >= 1 and repair_attempts >= 0, got {max_turns}, {repair_attempts}"
        )
    messages = _messages(prompt)
    toolbox = await _toolbox(ctx, tools)
    contract = _output_contract(output)
    request: dict[str, JSON] = dict(params)
    if toolbox:
        request["tools"] = [tool.definition for tool in toolbox.values()]
    if contract is not None:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": contract.schema},
        }
    repairs, problem = 0, ""
    for turn in range(1, max_turns + 1):
        reply = await ctx.activity(activity, {**request, "messages": messages})
        _count(totals, reply)
        content = str(reply.get("content") or "")
        calls = reply.get("tool_calls") or []
        if calls:
            messages.append({"role": "assistant", "content": content, "tool_calls": calls})
            results = await asyncio.gather(*(_call_tool(ctx, toolbox, call) for call in calls))
            messages.extend(results)
            continue
        if contract is None:
            return content
        try:
            return contract.decode(loads(_unfenced(content)))
        except (ValueError, ValidationError) as err:
            problem = _problem(err)
        if repairs >= repair_attempts:
            raise LLMOutputError(activity, problem, content=content, turns=turn)
        repairs += 1
        messages.append({"role": "assistant", "content": content})
        messages.append(
            {
                "role": "user",
                "content": f"Your answer does not match the required JSON Schema: {problem}. "
                "Answer again with only the corrected JSON value.",
            }
        )
    last = f" (last answer: {problem})" if problem and not calls else " (still calling tools)"
    raise LLMOutputError(
        activity,
        f"no final answer within max_turns={max_turns} model calls{last}",
        content=content,
        turns=max_turns,
    )


def _count(totals: dict[str, int], reply: JSON) -> None:
    """Add a model call's tokens (from its recorded result, so replay counts the same)."""
    usage = reply.get("usage") if isinstance(reply, dict) else None
    totals["calls"] += 1
    for kind in TOKEN_KINDS:
        count = usage.get(kind) if isinstance(usage, dict) else None
        totals[kind] += count if isinstance(count, int) else 0


def _messages(prompt: str | Sequence[dict[str, JSON]]) -> list[dict[str, JSON]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = list(prompt)
    if not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise TypeError(
            "ctx.llm takes a prompt string or a non-empty list of messages "
            f'like {{"role": "user", "content": "..."}}, got {prompt!r}'
        )
    return loads(dumps(messages))  # type: ignore[no-any-return]  # a JSON copy the loop extends


async def _toolbox(
    ctx: WorkflowContext[Any, Any], tools: Sequence[Activity[..., Any] | str]
) -> dict[str, _Tool]:
    """Each tool's definition: a native activity's from its type hints, registered specs' from
    the registry (one recorded TOOLS_ACTIVITY call)."""
    specs = [t for t in tools if isinstance(t, str)]
    if any(not isinstance(t, Activity | str) for t in tools):
        raise TypeError(
            f"ctx.llm tools are @loom.activity functions or 'name@range' specs, got {tools!r}"
        )
    registered = await ctx.activity(TOOLS_ACTIVITY, {"specs": specs}) if specs else []
    found = dict(zip(specs, registered, strict=True))
    toolbox: dict[str, _Tool] = {}
    for tool in tools:
        definition: dict[str, JSON]
        if isinstance(tool, Activity):
            definition = {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.input_schema(),
            }
        else:
            definition = found[tool]
        name = str(definition["name"])
        if not TOOL_NAME.match(name) or name in toolbox:
            raise ValueError(
                f"tool name {name!r} is {'a duplicate' if name in toolbox else 'not allowed'}: "
                "models accept unique names of 1-64 letters, digits, '_' and '-'"
            )
        validator = Draft202012Validator(definition["parameters"])
        toolbox[name] = _Tool(tool, definition, validator)
    return toolbox


async def _call_tool(
    ctx: WorkflowContext[Any, Any], toolbox: dict[str, _Tool], call: dict[str, JSON]
) -> dict[str, JSON]:
    """Run one tool call; any problem (unknown tool, arguments not matching its schema, the
    activity failing for good) becomes the tool's error for the model, not a workflow crash."""
    reply: dict[str, JSON] = {"role": "tool", "tool_call_id": call["id"]}
    name = str(call.get("name"))
    tool = toolbox.get(name)
    try:
        if tool is None:
            raise ValueError(f"no tool named {name!r}; the tools are {sorted(toolbox)}")
        arguments = loads(str(call.get("arguments") or "{}"))
        if not isinstance(arguments, dict):
            raise ValueError(f"arguments for tool {name!r} must be a JSON object")
        problem = best_match(tool.validator.iter_errors(arguments))
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "the arguments"
            raise ValueError(f"invalid arguments for tool {name!r} at {where}: {problem.message}")
        if isinstance(tool.target, Activity):
            result = await ctx.activity(tool.target, **arguments)
        else:
            result = await ctx.activity(tool.target, arguments)
    except (ValueError, ActivityFailedError) as err:
        return reply | {"content": f"error: {err}", "is_error": True}
    return reply | {"content": dumps(result)}


def _output_contract(output: Any) -> _Output | None:
    if output is None:
        return None
    if isinstance(output, dict):
        validator = Draft202012Validator(output)

        def check(value: JSON) -> JSON:
            problem = best_match(validator.iter_errors(value))
            if problem is not None:
                where = "/".join(str(p) for p in problem.absolute_path) or "the answer"
                raise ValueError(f"at {where}: {problem.message}")
            return value

        return _Output(output, check)
    adapter = type_adapter(output)
    return _Output(adapter.json_schema(), adapter.validate_python)


def _unfenced(content: str) -> str:
    """The answer without a Markdown code fence, which models like to add around JSON."""
    text = content.strip()
    fenced = _FENCE.match(text)
    return fenced.group(1) if fenced else text


def _problem(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = "/".join(str(p) for p in first["loc"]) or "the answer"
        return f"at {where}: {first['msg']}"
    text = str(err)
    return text if text.startswith("at ") else f"not JSON ({text})"
