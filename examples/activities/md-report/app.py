"""md-report — Python component activity: renders the research report as Markdown.

Input {"topic", "agent", "sources": [{"title", "url", "summary", "words"}], "reviewer"?, "note"?,
"usage"?: {"total_tokens"}} -> {"markdown": str, "sections": int, "words": int}.
Build: componentize-py -d wasm_activities/sdk/loom.wit -w activity componentize app -o report.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host


def _section(index: int, source: dict) -> list[str]:
    title = source.get("title") or source["url"]
    return [
        f"## {index}. {title}",
        "",
        source["summary"].strip(),
        "",
        f"*Source: <{source['url']}> ({source.get('words', 0)} words)*",
        "",
    ]


def render(data: dict, heading: str) -> dict:
    topic = data["topic"]
    sources = data["sources"]
    lines = [f"# {heading}: {topic}", ""]
    lines.append(f"Prepared by {data.get('agent') or 'an agent'} from {len(sources)} sources.")
    if data.get("reviewer"):
        note = f": “{data['note']}”" if data.get("note") else "."
        lines.append(f"Approved by {data['reviewer']}{note}")
    lines.append("")
    for index, source in enumerate(sources, 1):
        lines.extend(_section(index, source))
    tokens = (data.get("usage") or {}).get("total_tokens")
    if tokens is not None:
        lines.append(f"---\nLLM usage: {tokens} tokens.")
    markdown = "\n".join(lines).rstrip() + "\n"
    return {"markdown": markdown, "sections": len(sources), "words": len(markdown.split())}


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        try:
            data = json.loads(input)
            result = render(data, host.config_get("heading") or "Research report")
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise Err(f"expected topic and sources[{{url, summary}}]: {err!r}") from err
        host.log(f"rendered {result['sections']} sections, {result['words']} words")
        return json.dumps(result, ensure_ascii=False)
