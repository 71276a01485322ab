"""`loom wdl validate|register|list|show|graph|schema`: declarative workflow definitions
from the command line. Registered versions live in the database, immutable; a worker without
`--app` runs them and `loom start NAME[@RANGE]` starts one (how `--app FILE.json` takes a
file instead is `options.load_app`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from loom.cli.options import (
    database_option,
    echo_json,
    json_option,
    open_store,
    print_fields,
    print_table,
    run,
    when,
)

if TYPE_CHECKING:
    from loom.wdl import CompiledDefinition

__all__ = ["wdl"]


@click.group()
def wdl() -> None:
    """Declarative workflow definitions (JSON): validate, register, list, show, draw."""


@wdl.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable snake_case keys).")
def validate(file: str, as_json: bool) -> None:
    """Check FILE against the schema and the rules; exit 1 listing every problem."""
    from loom.wdl import InvalidDefinitionError, load

    try:
        compiled = load(file)
    except InvalidDefinitionError as err:
        if as_json:
            click.echo(json.dumps({"valid": False, "file": file, "problems": err.problems}))
        else:
            click.echo(f"{file}: invalid", err=True)
            for problem in err.problems:
                click.echo(f"  - {problem}", err=True)
        raise SystemExit(1) from None
    steps = compiled.step_names()
    if as_json:
        summary = {"valid": True, "file": file, "name": compiled.name}
        summary |= {"version": compiled.version, "sha256": compiled.sha256, "steps": steps}
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"{file}: valid — {compiled.name} {compiled.version}, {len(steps)} step(s) "
        f"({', '.join(steps)}), sha256 {compiled.sha256[:16]}"
    )


@wdl.command()
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@database_option
def register(file: str, as_json: bool, database: str) -> None:
    """Validate FILE and store it as an immutable version (name and version from FILE).

    Registering the same content again is a no-op; other content under a registered version
    is an error: give the change a new `version`."""
    from loom import wdl as language

    async def operation() -> tuple[CompiledDefinition, bool]:
        return await language.register(open_store(database, create=True), file)

    compiled, created = run(operation)
    if as_json:
        summary = {"name": compiled.name, "version": compiled.version, "sha256": compiled.sha256}
        echo_json(summary | {"created": created})
        return
    verb = "registered" if created else "already registered (unchanged)"
    click.echo(f"{verb} {compiled.name} {compiled.version} sha256 {compiled.sha256[:16]}")


@wdl.command(name="list")
@json_option
@database_option
def list_definitions(as_json: bool, database: str) -> None:
    """Registered definitions, one line per version."""
    records = run(lambda: open_store(database).list_definitions())
    if as_json:
        echo_json(
            {
                "definitions": [
                    {
                        "name": r.name,
                        "version": r.version,
                        "sha256": r.sha256,
                        "registered_at": r.registered_at,
                    }
                    for r in records
                ]
            }
        )
        return
    rows = [(r.name, r.version, r.sha256[:16], when(r.registered_at)) for r in records]
    print_table(["NAME", "VERSION", "SHA256", "REGISTERED"], rows)


@wdl.command()
@click.argument("name")
@click.option("--version", help="This version (default: the latest registered).")
@json_option
@database_option
def show(name: str, version: str | None, as_json: bool, database: str) -> None:
    """A registered definition: its versions, steps and document (NAME or NAME@RANGE)."""
    from loom import wdl as language

    async def operation() -> tuple[CompiledDefinition, list[str]]:
        store = open_store(database)
        spec = f"{name}@={version}" if version else name
        compiled = await language.resolve(store, spec)
        return compiled, [r.version for r in await store.list_definitions(compiled.name)]

    compiled, versions = run(operation)
    document = compiled.definition.model_dump(mode="json", by_alias=True, exclude_none=True)
    if as_json:
        echo_json(
            {
                "name": compiled.name,
                "version": compiled.version,
                "sha256": compiled.sha256,
                "versions": versions,
                "steps": compiled.step_names(),
                "document": document,
            }
        )
        return
    print_fields(
        [
            ("name", compiled.name),
            ("version", compiled.version),
            ("sha256", compiled.sha256),
            ("versions", ", ".join(versions)),
            ("steps", ", ".join(compiled.step_names())),
        ]
    )


@wdl.command()
@click.argument("source")
@database_option
def graph(source: str, database: str) -> None:
    """Print a definition's steps as a Mermaid flowchart (paste into any Mermaid viewer).

    SOURCE is a definition file, or the NAME[@RANGE] of a registered definition."""
    from loom import wdl as language

    if Path(source).is_file() or source.endswith(".json"):
        compiled = language.load(source)
    else:
        compiled = run(lambda: language.resolve(open_store(database), source))
    click.echo(language.mermaid(compiled), nl=False)


@wdl.command()
def schema() -> None:
    """Print the JSON Schema of definitions (also shipped as loom/wdl_schema.json)."""
    from loom.wdl import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
