"""`loom activity ...`: parsing and rendering with CliRunner, behaviour with real subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from activity_registry import Registry
from loom.cli import main
from tests.activity_registry.activity_files import SPIN_WAT, constant_wat, write_activity
from tests.wasm_activities.build import REPO_ROOT as REPO
from tests.wasm_activities.build import build_example

WORD_COUNT = REPO / "examples" / "activities" / "word-count"
SHA_LINE = re.compile(r"^word-count@1\.0\.0 sha256:[0-9a-f]{64}\n$")


@pytest.fixture(scope="module")
def word_count(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private folder with the C reactor example's activity.toml and its freshly built .wasm.

    Private so tests can edit the manifest without touching examples/ or racing other modules.
    """
    built = build_example("word-count")
    folder = tmp_path_factory.mktemp("word-count")
    shutil.copy(WORD_COUNT / "activity.toml", folder / "activity.toml")
    shutil.copy(built, folder / "word_count.wasm")
    return folder


def loom(*args: str, db: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `loom` CLI in a subprocess against `db`."""
    if (REPO / "loom" / "__main__.py").exists():
        command = [sys.executable, "-m", "loom", *args]
    else:
        command = [sys.executable, "-c", "from loom.cli import main; main()", *args]
    env = {**os.environ, "LOOM_DATABASE": str(db), "PYTHONPATH": str(REPO)}
    env.pop("LOOM_DEBUG", None)
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        cwd=db.parent,
        input=stdin,
        timeout=60,
        check=False,
    )


# -- behaviour: real subprocesses ---------------------------------------------------------------


@pytest.mark.timeout(300)
def test_register_list_show_run_remove(word_count: Path, tmp_path: Path) -> None:
    db = tmp_path / "loom.db"

    registered = loom("activity", "register", str(word_count / "activity.toml"), db=db)
    assert registered.returncode == 0, registered.stderr
    assert SHA_LINE.match(registered.stdout)

    again = loom("activity", "register", str(word_count / "word_count.wasm"), db=db)
    assert again.returncode == 0, again.stderr
    assert again.stdout == registered.stdout
    assert "already registered" in again.stderr

    listed = loom("activity", "list", "--json", db=db)
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["ref"] == "word-count@1.0.0"
    assert entry["abi"] == "reactor"
    assert entry["limits"]["memory_mb"] == 16
    assert registered.stdout.strip().endswith(entry["sha256"])

    table = loom("activity", "list", db=db)
    assert table.returncode == 0
    assert "word-count" in table.stdout
    assert entry["sha256"][:12] in table.stdout

    shown = loom("activity", "show", "word-count@^1", "--json", db=db)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["input_schema"]["required"] == ["text"]

    ran = loom("activity", "run", "word-count@^1", "--input", '{"text": "hello big world"}', db=db)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == {"words": 3, "chars": 15}
    assert ran.stdout.count("\n") == 1  # the output JSON alone

    (tmp_path / "in.json").write_text('{"text": "one"}')
    from_file = loom("activity", "run", "word-count", "--input", f"@{tmp_path / 'in.json'}", db=db)
    assert json.loads(from_file.stdout) == {"words": 1, "chars": 3}
    from_stdin = loom("activity", "run", "word-count", "--input", "-", db=db, stdin='{"text":""}')
    assert json.loads(from_stdin.stdout) == {"words": 0, "chars": 0}

    removed = loom("activity", "remove", "word-count@1.0.0", db=db)
    assert removed.returncode == 0, removed.stderr
    assert json.loads(loom("activity", "list", "--json", db=db).stdout) == []


@pytest.mark.timeout(300)
def test_run_failures_are_one_line_with_the_error_type(word_count: Path, tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    assert loom("activity", "register", str(word_count), db=db).returncode == 0

    bad_input = loom("activity", "run", "word-count@^1", "--input", '{"text": 5}', db=db)
    assert bad_input.returncode == 1
    assert bad_input.stdout == ""
    assert bad_input.stderr.startswith("SchemaViolationError: input does not match")
    assert "$.text: 5 is not of type 'string'" in bad_input.stderr
    assert bad_input.stderr.count("\n") == 1

    no_range = loom("activity", "run", "word-count@^2", db=db)
    assert no_range.returncode == 1
    assert no_range.stderr == (
        "ActivityNotFoundError: activity 'word-count@^2' not found (no version satisfies '^2'); "
        "registered: 1.0.0; register a matching version or widen the range\n"
    )

    unknown = loom("activity", "show", "summarize", db=db)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("ActivityNotFoundError: activity 'summarize' not found")

    with_debug = loom("--debug", "activity", "run", "nope", db=db)
    assert with_debug.returncode == 1
    assert "Traceback (most recent call last)" in with_debug.stderr
    assert with_debug.stderr.rstrip().endswith(
        "ActivityNotFoundError: activity 'nope' not found; no version of it is registered; "
        "run `loom activity register PATH` first"
    )


@pytest.mark.timeout(300)
def test_widened_grants_need_approval(word_count: Path, tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    assert loom("activity", "register", str(word_count), db=db).returncode == 0
    manifest = word_count / "activity.toml"
    wider = tmp_path / "wider"
    wider.mkdir()
    shutil.copy(word_count / "word_count.wasm", wider / "word_count.wasm")
    (wider / "activity.toml").write_text(
        manifest.read_text().replace('version = "1.0.0"', 'version = "1.1.0"')
        + '\n[grants]\nnet = ["api.example.com"]\nsecrets = ["API_KEY"]\n'
    )

    refused = loom("activity", "register", str(wider), db=db)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "word-count@1.1.0 asks for more than the grants approved for word-count:",
        "  net: +api.example.com",
        "  secrets: +API_KEY",
        "GrantsWidenedError: word-count@1.1.0 asks for grants beyond the grants approved for "
        "word-count: net: +api.example.com; secrets: +API_KEY; review them, then re-register "
        "with --approve-grants (in Python: Registry.register(path, approve_grants=True))",
    ]

    approved = loom("activity", "register", str(wider), "--approve-grants", db=db)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.startswith("word-count@1.1.0 sha256:")
    assert "  net: +api.example.com" in approved.stderr


# -- parsing and rendering: CliRunner -------------------------------------------------------------


def invoke(*args: str, db: Path, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["activity", *args, "--db", str(db)], input=input)
    return result.exit_code, result.stdout, result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    code, _, err = invoke("run", "echo@^^1", db=db)
    assert code == 2
    assert "invalid version range" in err
    code, _, err = invoke("remove", "echo", db=db)
    assert code == 2
    assert "expected NAME@VERSION" in err
    code, _, err = invoke("remove", "echo@^1", db=db)
    assert code == 2
    code, _, err = invoke("run", "echo", "--input", "{not json", db=db)
    assert code == 2
    assert "not valid JSON" in err
    code, _, err = invoke("run", "echo", "--input", "@/nonexistent/in.json", db=db)
    assert code == 2
    assert "cannot read" in err


def test_manifest_error_is_one_line(tmp_path: Path) -> None:
    manifest = write_activity(tmp_path, extra="[limits]\nmemory_mb = -1")
    code, out, err = invoke("register", str(manifest), db=tmp_path / "loom.db")
    assert code == 1
    assert out == ""
    assert err.startswith("ManifestError: ")
    assert "field 'limits.memory_mb'" in err
    assert err.count("\n") == 1


def test_corrupt_module_is_refused(tmp_path: Path) -> None:
    manifest = write_activity(tmp_path, module_bytes=b"MZ not wasm")
    code, out, err = invoke("register", str(manifest), db=tmp_path / "loom.db")
    assert code == 1
    assert err.startswith("CorruptModuleError: module ")
    assert "is not WebAssembly" in err
    assert str(tmp_path) in err  # names the file, not only a sha256
    code, out, _ = invoke("list", "--json", db=tmp_path / "loom.db")
    assert json.loads(out) == []


def test_sandbox_limit_names_the_error_type(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    spin = write_activity(tmp_path, name="spin", wat=SPIN_WAT, extra="[limits]\ntimeout_ms = 50")
    assert invoke("register", str(spin), db=db)[0] == 0
    code, out, err = invoke("run", "spin", db=db)
    assert code == 1
    assert out == ""
    assert err.startswith("ActivityTimeout: ")
    assert err.count("\n") == 1


def test_output_violation(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    manifest = write_activity(
        tmp_path,
        name="liar",
        wat=constant_wat('{"count": "three"}'),
        output_schema={"type": "object", "properties": {"count": {"type": "integer"}}},
    )
    assert invoke("register", str(manifest), db=db)[0] == 0
    code, out, err = invoke("run", "liar", db=db)
    assert code == 1
    assert out == ""
    assert err.startswith("SchemaViolationError: output does not match the output schema of liar")


def test_list_and_show_render_for_people(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"
    assert CliRunner().invoke(main, ["init", "--db", str(db)]).exit_code == 0
    code, out, err = invoke("list", db=db)
    assert (code, out) == (0, "")
    assert "no activities registered" in err

    manifest = write_activity(
        tmp_path, name="echo", version="1.2.0", grants='net = ["api.example.com"]'
    )
    assert invoke("register", str(manifest), "--approve-grants", db=db)[0] == 0
    code, out, _ = invoke("list", db=db)
    assert code == 0
    assert re.search(r"echo\s+1\.2\.0\s+reactor\s+[0-9a-f]{12}\s", out)

    code, out, _ = invoke("show", "echo@~1.2", db=db)
    assert code == 0
    assert "echo@1.2.0" in out
    assert "net: api.example.com" in out
    assert "memory_mb=32" in out
    assert "no sandboxed HTTP requests recorded" in out

    code, out, _ = invoke("show", "echo", "--json", db=db)
    record = json.loads(out)
    assert record["egress"] == {}  # no workflow called it yet
    assert sorted(record) == [
        "abi",
        "circuit_breaker",
        "circuit_breaker_state",
        "description",
        "egress",
        "grants",
        "input_schema",
        "limits",
        "name",
        "output_schema",
        "ref",
        "registered_at",
        "retry",
        "sha256",
        "version",
    ]


def test_database_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "env.db"
    monkeypatch.setenv("LOOM_DATABASE", str(db))
    manifest = write_activity(
        tmp_path, name="const", wat=constant_wat("42"), output_schema={"type": "integer"}
    )
    result = CliRunner().invoke(main, ["activity", "register", str(manifest)])
    assert result.exit_code == 0, result.stderr
    result = CliRunner().invoke(main, ["activity", "run", "const"])
    assert (result.exit_code, result.stdout) == (0, "42\n")
    assert db.exists()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("example", "module", "value", "expected"),
    [
        (
            "char-count",
            "char_count.wasm",
            "añ",  # counted as the JSON text "añ"
            {"codepoints": 4, "bytes": 5, "lines": 1},
        ),
        ("echo", "echo.wasm", {"a": [1, "b"]}, {"a": [1, "b"]}),
    ],
    ids=["zig-reactor", "c-command"],
)
def test_other_examples_register_and_run(
    tmp_path: Path, example: str, module: str, value: object, expected: object
) -> None:
    folder = tmp_path / example
    folder.mkdir()
    manifest = (REPO / "examples" / "activities" / example / "activity.toml").read_text()
    # The Zig build's initial memory exceeds the example's 16 MiB limit (reported to the sandbox
    # owner); this test is about registering and running, so give it the default 32 MiB.
    (folder / "activity.toml").write_text(manifest.replace("memory_mb = 16", "memory_mb = 32"))
    shutil.copy(build_example(example), folder / module)
    db = tmp_path / "loom.db"
    code, out, err = invoke("register", str(folder / module), db=db)
    assert code == 0, err
    code, out, err = invoke("run", example, "--input", json.dumps(value), db=db)
    assert code == 0, err
    assert json.loads(out) == expected


def test_verbose_run_prints_logs_and_usage_to_stderr(tmp_path: Path) -> None:
    manifest = (REPO / "examples" / "activities" / "char-count" / "activity.toml").read_text()
    (tmp_path / "activity.toml").write_text(
        manifest.replace("memory_mb = 16", "memory_mb = 32")
        + '\n[grants]\nsecrets = ["LOOM_TEST_UNSET_SECRET"]\n'
    )
    shutil.copy(build_example("char-count"), tmp_path / "char_count.wasm")
    db = tmp_path / "loom.db"
    assert invoke("register", str(tmp_path), "--approve-grants", db=db)[0] == 0
    code, out, err = invoke("run", "char-count@1.0.0", "--input", '"x"', "-v", db=db)
    assert code == 0, err
    assert json.loads(out) == {"codepoints": 3, "bytes": 3, "lines": 1}
    lines = err.splitlines()
    assert lines[0] == "warning: granted secrets not set here: LOOM_TEST_UNSET_SECRET"
    assert lines[1] == "char-count: counted"
    usage = json.loads(lines[2].removeprefix("usage: "))
    assert usage["output_bytes"] == len('{"codepoints":3,"bytes":3,"lines":1}')


def test_unopenable_database_is_one_line(tmp_path: Path) -> None:
    code, _, err = invoke("list", db=tmp_path / "missing-dir" / "loom.db")
    assert code == 1
    assert err.startswith("DatabaseNotFoundError: database ")
    assert err.count("\n") == 1

    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    code, _, err = invoke("list", db=tmp_path / "garbage.db")
    assert code == 1
    assert "file is not a database" in err


def test_native_activities_are_listed_but_not_run_from_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "loom.db"

    async def register_native() -> None:
        async with Registry(db) as registry:
            await registry.register_native(
                "charge", description="charges a card", input_schema={}, output_schema={}
            )

    asyncio.run(register_native())
    code, out, _ = invoke("list", db=db)
    assert code == 0
    assert re.search(r"charge\s+0\.0\.0\s+native\s+-\s", out)
    code, out, err = invoke("run", "charge", db=db)
    assert (code, out) == (1, "")
    assert err.startswith("RegistryError: charge@0.0.0 is a native activity")


def test_read_commands_never_create_a_database(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    for args in (["list"], ["show", "echo"], ["run", "echo"], ["remove", "echo@1.0.0"]):
        code, _, err = invoke(*args, db=typo)
        assert code == 1, args
        assert "does not exist" in err and "loom init" in err
    assert not typo.exists()


def test_a_module_starting_over_its_memory_limit_is_refused_with_the_fix(tmp_path: Path) -> None:
    """It would fail every call; the documented zig build once kept a 16 MiB stack."""
    big = SPIN_WAT.replace('(memory (export "memory") 1)', '(memory (export "memory") 300)')
    assert big != SPIN_WAT
    manifest = write_activity(tmp_path, wat=big, extra="[limits]\nmemory_mb = 16")
    code, _, err = invoke("register", str(manifest), db=tmp_path / "loom.db")
    assert code == 1
    assert "limits.memory_mb" in err and "18.8 MiB" in err
    assert "at least 19" in err and "stack-size" in err
