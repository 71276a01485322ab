"""LLM token usage: recognising it in an activity's result, pricing it, and summing it.

A model call's tokens are recorded with its completion (`llm_usage` in the ACTIVITY_COMPLETED
payload), priced once when recorded, so a later change of the price table does not rewrite
what a past run cost. Knows nothing of stores or workflows beyond event payloads.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from loom._json import JSON

PRICES_ENV = "LOOM_PRICES"
TOKEN_KINDS = ("prompt_tokens", "completion_tokens", "total_tokens")


@cache
def _prices(path: str) -> dict[str, dict[str, float]]:
    """The price table `LOOM_PRICES` names: `{model: {"input": $/Mtok, "output": $/Mtok}}`."""
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{PRICES_ENV}={path!r} is not a readable JSON price table: {err}"
        ) from err
    if not isinstance(table, dict) or not all(
        isinstance(p, dict)
        and all(isinstance(p.get(k, 0), int | float) for k in ("input", "output"))
        for p in table.values()
    ):
        raise ValueError(
            f"{PRICES_ENV}={path!r} must map each model to dollars per million tokens, e.g. "
            '{"gpt-4o-mini": {"input": 0.15, "output": 0.6}}'
        )
    return table


def check_prices() -> None:
    """Read the `LOOM_PRICES` table now (workers call it at start): a bad table is a clear
    error before any work, never a failure while a model call's result is being recorded."""
    path = os.environ.get(PRICES_ENV)
    if path:
        _prices(path)


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Dollars for one call from the `LOOM_PRICES` table; None without a table or a price.

    A model is priced by its exact name, else by the longest table name it starts with
    (`gpt-4o-mini-2024-07-18` takes `gpt-4o-mini`'s price), as providers date their models.
    """
    path = os.environ.get(PRICES_ENV)
    if not path:
        return None
    table = _prices(path)
    key = (
        model
        if model in table
        else max((m for m in table if model.startswith(m)), key=len, default=None)
    )
    if key is None:
        return None
    price = table[key]
    dollars = prompt_tokens * price.get("input", 0) + completion_tokens * price.get("output", 0)
    return round(dollars / 1_000_000, 8)


def llm_usage(result: JSON) -> dict[str, JSON] | None:
    """The usage record of a model call's result (`{model, usage: {prompt_tokens, …}}`, the
    shape every provider activity returns), or None for any other result."""
    if not isinstance(result, dict) or not isinstance(result.get("model"), str):
        return None
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return None
    counts = {kind: usage.get(kind) for kind in TOKEN_KINDS}
    if not all(isinstance(n, int) and n >= 0 for n in counts.values()):
        return None
    model = str(result["model"])
    record: dict[str, JSON] = {"model": model, **counts}
    record["cost"] = cost(model, int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
    return record


def usage_totals(payloads: list[dict[str, JSON]]) -> dict[str, JSON]:
    """Summed `llm_usage` of these ACTIVITY_COMPLETED payloads: tokens, calls and cost (None
    when no call was priced), with a breakdown per model."""
    totals: dict[str, JSON] = {kind: 0 for kind in TOKEN_KINDS}
    totals |= {"cost": None, "calls": 0}
    models: dict[str, dict[str, JSON]] = {}
    for payload in payloads:
        record = payload.get("llm_usage")
        if not isinstance(record, dict):
            continue
        per_model = models.setdefault(
            str(record["model"]), {kind: 0 for kind in TOKEN_KINDS} | {"cost": None, "calls": 0}
        )
        for bucket in (totals, per_model):
            for kind in TOKEN_KINDS:
                bucket[kind] += record[kind]
            bucket["calls"] += 1
            if record.get("cost") is not None:
                bucket["cost"] = round((bucket["cost"] or 0) + record["cost"], 8)
    totals["models"] = models
    return totals
