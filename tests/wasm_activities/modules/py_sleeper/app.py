"""A hostile component with no grants: it sleeps (`time.sleep` -> wasi:clocks/monotonic-clock
subscribe-duration + wasi:io/poll), spins, or logs as asked.

Input {"sleep_ms"?: int, "spin"?: bool, "log"?: int} -> {"woke": true}.
"""

import json
import time

import wit_world
from wit_world.imports import host


class WitWorld(wit_world.WitWorld):
    def run(self, input: str) -> str:
        data = json.loads(input)
        for _ in range(int(data.get("log", 0))):
            host.log("x" * 1000)
        if data.get("spin"):
            while True:
                pass
        time.sleep(int(data.get("sleep_ms", 0)) / 1000)
        return json.dumps({"woke": True})
