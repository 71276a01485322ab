"""py-greet — Python component activity (componentize-py, WIT world `loom:activity/activity`).

Input {"name": str, "excited"?: bool} -> {"greeting": str, "length": int}.
Build: componentize-py -d wasm_activities/sdk/loom.wit -w activity componentize app -o greet.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import host


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        try:
            data = json.loads(input)
            name = data["name"]
        except (ValueError, KeyError, TypeError) as err:
            raise Err(f"expected an object with a string field 'name': {err}") from err
        if not isinstance(name, str):
            raise Err("'name' must be a string")
        salutation = host.config_get("salutation") or "Hello"
        host.log(f"greeting {len(name)} characters")
        greeting = f"{salutation}, {name}{'!' if data.get('excited') else '.'}"
        return json.dumps({"greeting": greeting, "length": len(name)}, ensure_ascii=False)
