"""activity.toml parsing: every error names the file and the offending field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activity_registry import Manifest, ManifestError

BASE = """\
name = "word-count"
version = "1.0.0"
abi = "command"
module = "word_count.wasm"
description = "Counts words"
input_schema = "schemas/in.json"
output_schema = "schemas/out.json"
"""

FULL = (
    BASE
    + """
[limits]
memory_mb = 16
timeout_ms = 500
fuel = 1000000
max_output_bytes = 4096

[grants]
net = ["127.0.0.1:8080", "api.openai.com"]
secrets = ["OPENAI_API_KEY"]
env = ["MODEL"]
config = { model = "small" }
fs = [{ host = "./data", guest = "/data", mode = "ro" }]

[retry]
max_attempts = 5
initial_interval_ms = 100
backoff = 1.5
"""
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "in.json").write_text(
        json.dumps({"type": "object", "properties": {"text": {"type": "string"}}})
    )
    (tmp_path / "schemas" / "out.json").write_text(json.dumps({"type": "object"}))
    (tmp_path / "word_count.wasm").write_bytes(b"\0asm\x01\0\0\0")
    return tmp_path


def write(folder: Path, text: str) -> Path:
    path = folder / "activity.toml"
    path.write_text(text)
    return path


def load_error(folder: Path, text: str) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        Manifest.load(write(folder, text))
    return caught.value


def test_full_manifest(folder: Path) -> None:
    manifest = Manifest.load(write(folder, FULL))
    assert manifest.ref == "word-count@1.0.0"
    assert manifest.abi == "command"
    assert manifest.module_path == (folder / "word_count.wasm").resolve()
    assert manifest.input_schema["properties"] == {"text": {"type": "string"}}
    assert manifest.limits.memory_mb == 16
    assert manifest.limits.max_log_bytes == 65_536  # default kept
    assert manifest.grants.net == ["127.0.0.1:8080", "api.openai.com"]
    assert manifest.grants.config == {"model": "small"}
    assert manifest.grants.fs[0].host == str((folder / "data").resolve())
    assert manifest.retry.max_attempts == 5
    assert manifest.retry.max_interval_ms == 60_000


def test_defaults_and_inline_schemas(folder: Path) -> None:
    text = BASE.replace('input_schema = "schemas/in.json"\n', "").replace(
        'output_schema = "schemas/out.json"\n', ""
    )
    text += '\n[input_schema]\ntype = "object"\n\n[output_schema]\ntype = "integer"\n'
    manifest = Manifest.load(write(folder, text))
    assert manifest.input_schema == {"type": "object"}
    assert manifest.output_schema == {"type": "integer"}
    assert manifest.limits.memory_mb == 32
    assert manifest.grants.net == []
    assert manifest.retry.max_attempts == 3


def test_load_from_the_wasm_path_or_directory(folder: Path) -> None:
    write(folder, BASE)
    assert Manifest.load(folder / "word_count.wasm").name == "word-count"
    assert Manifest.load(folder).name == "word-count"


@pytest.mark.parametrize(
    ("replace", "by", "field", "message"),
    [
        ('name = "word-count"', 'name = "Word Count"', "name", "not a valid activity name"),
        ('version = "1.0.0"', 'version = "1.0"', "version", "not a semantic version"),
        ('abi = "command"', 'abi = "wasi"', "abi", "'command', 'reactor' or 'component'"),
        ('abi = "command"', 'abi = "native"', "abi", "'command', 'reactor' or 'component'"),
        ('module = "word_count.wasm"', 'module = "missing.wasm"', "module", "does not exist"),
        ('description = "Counts words"', "description = 3", "description", "valid string"),
        ('name = "word-count"\n', "", "name", "required field is missing"),
        (
            'input_schema = "schemas/in.json"\n',
            "",
            "input_schema",
            "add an [input_schema] table",
        ),
        (
            'input_schema = "schemas/in.json"',
            'input_schema = "nope.json"',
            "input_schema",
            "cannot read",
        ),
        ('description = "Counts words"', 'descripton = "typo"', "descripton", "unknown field"),
    ],
)
def test_top_level_errors_name_the_field(
    folder: Path, replace: str, by: str, field: str, message: str
) -> None:
    assert replace in BASE
    error = load_error(folder, BASE.replace(replace, by))
    assert error.field == field
    assert message in str(error)
    assert str(folder / "activity.toml") in str(error)


@pytest.mark.parametrize(
    ("table", "field", "message"),
    [
        ("[limits]\nmemory_mb = 0", "limits.memory_mb", "greater than or equal to 1"),
        ('[limits]\ntimeout_ms = "2s"', "limits.timeout_ms", "valid integer"),
        ('[limits]\nmemory_mb = "32"', "limits.memory_mb", "valid integer"),
        ("[limits]\nmemory = 3", "limits.memory", "[limits] accepts"),
        ('[grants]\nnet = ["http://x y"]', "grants.net", "expected host"),
        ('[grants]\nsecrets = ["NOT-VALID"]', "grants.secrets", "not a valid name"),
        ('[grants]\nfs = [{ host = "d", guest = "rel" }]', "grants.fs.0.guest", "absolute"),
        (
            '[grants]\nfs = [{ host = "d", guest = "/d", mode = "x" }]',
            "grants.fs.0.mode",
            "'ro' or 'rw'",
        ),
        ("[grants]\nnetwork = []", "grants.network", "[grants] accepts"),
        ("[retry]\nmax_attempts = 0", "retry.max_attempts", "greater than or equal to 1"),
        ("[retry]\nbackoff = 0.5", "retry.backoff", "greater than or equal to 1"),
    ],
)
def test_table_errors_name_the_nested_field(
    folder: Path, table: str, field: str, message: str
) -> None:
    error = load_error(folder, BASE + "\n" + table + "\n")
    assert error.field == field
    assert message in str(error)


def test_toml_syntax_error(folder: Path) -> None:
    error = load_error(folder, 'name = "unterminated\n')
    assert error.field is None
    assert "not valid TOML" in str(error)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="file not found"):
        Manifest.load(tmp_path / "activity.toml")
    (tmp_path / "x.wasm").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"no activity\.toml found beside"):
        Manifest.load(tmp_path / "x.wasm")


def test_wasm_path_must_be_the_manifest_module(folder: Path) -> None:
    write(folder, BASE)
    (folder / "other.wasm").write_bytes(b"\0asm")
    with pytest.raises(ManifestError, match="register the manifest instead") as caught:
        Manifest.load(folder / "other.wasm")
    assert caught.value.field == "module"


def test_schema_file_that_is_not_json(folder: Path) -> None:
    (folder / "schemas" / "in.json").write_text("{not json")
    error = load_error(folder, BASE)
    assert error.field == "input_schema"
    assert "is not valid JSON" in str(error)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "objekt"}, "not a valid JSON Schema 2020-12"),
        ({"properties": {"a": {"minLength": -1}}}, "at $.properties.a.minLength"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "only JSON Schema 2020-12"),
        ([1, 2], "valid dictionary"),
    ],
)
def test_schemas_are_checked_against_the_meta_schema(
    folder: Path, schema: object, message: str
) -> None:
    (folder / "schemas" / "out.json").write_text(json.dumps(schema))
    error = load_error(folder, BASE)
    assert error.field == "output_schema"
    assert message in str(error)


def test_explicit_2020_12_schema_is_accepted(folder: Path) -> None:
    (folder / "schemas" / "out.json").write_text(
        json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})
    )
    assert Manifest.load(write(folder, BASE)).output_schema["type"] == "object"
