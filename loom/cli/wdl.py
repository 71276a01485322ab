"""`loom wdl validate|graph|schema`: workflow definitions from the command line (how a
worker's `--app` takes them is `options.load_app`).

Storing definitions in the database (`register|list|show`) needs store tables: not here yet.
"""

from __future__ import annotations

import json

import click

__all__ = ["wdl"]


@click.group()
def wdl() -> None:
    """Declarative workflow definitions (JSON): validate, draw, print the schema."""


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
def graph(file: str) -> None:
    """Print FILE's steps as a Mermaid flowchart (paste into any Mermaid viewer)."""
    from loom.wdl import load, mermaid

    click.echo(mermaid(load(file)), nl=False)


@wdl.command()
def schema() -> None:
    """Print the JSON Schema of definitions (also shipped as loom/wdl_schema.json)."""
    from loom.wdl import json_schema

    click.echo(json.dumps(json_schema(), indent=2))
