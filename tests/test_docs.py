"""The code in README.md and docs/*.md runs, and the CLI transcripts print what they show.

How a fenced block is marked decides what happens to it (the first word of the info string is
the language, so every block still gets its syntax highlighting):

    ```python            executed. The blocks of one file run in order, in one namespace, in a
                         fresh temporary working directory; an exception fails the test.
    ```python notest     shown only: needs a TPU, a GPU, a download or a long run.
    ```console test      each `$ jaxlm ...` line runs in the same process and working directory
                         (so it sees the files the file's earlier blocks wrote) and must exit 0;
                         the lines that follow a command are expected output: each must begin
                         one of its output lines, in order (`...` stands for lines skipped).
    ```bash, ```console, ```yaml, ```text   shown only.

The pages run one after the other in one subprocess with one CPU device, as on a reader's
laptop (not the 8 simulated devices of conftest.py): `python tests/test_docs.py RESULTS.json
PAGE...` is that runner. Keep executed blocks small: tiny models, a few steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KNOWN = {
    "python": {"", "notest"},
    "console": {"", "test"},
    "bash": {""},
    "yaml": {""},
    "text": {""},
    "json": {""},
    "": {""},
}
FENCE = re.compile(r"^```(.*)$")


@dataclass
class Block:
    path: Path
    line: int  # of the first line inside the fence, 1-based
    language: str
    mark: str
    source: str


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file (fences at the start of a line)."""
    blocks, lines, opened = [], path.read_text().splitlines(), None
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if not match:
            continue
        if opened is None:
            opened = number, match.group(1).strip()
        elif not match.group(1).strip():
            start, info = opened
            language, _, mark = info.partition(" ")
            source = "\n".join(lines[start : number - 1]) + "\n"
            blocks.append(Block(path, start + 1, language, mark.strip(), source))
            opened = None
    assert opened is None, f"{path.name}:{opened[0]}: unclosed code fence"
    return blocks


def run_python(block: Block, namespace: dict) -> None:
    # Leading newlines make tracebacks name the line of the Markdown file.
    code = compile("\n" * (block.line - 1) + block.source, str(block.path), "exec")
    exec(code, namespace)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, standard output, standard error) of `jaxlm ARGV...` run in this process."""
    from jaxlm.cli import main

    output, errors = io.StringIO(), io.StringIO()
    formatwarning = warnings.formatwarning  # main() installs a one-line format
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
            code = main(argv)
    finally:
        warnings.formatwarning = formatwarning
    return code, output.getvalue(), errors.getvalue()


def run_console(block: Block) -> None:
    """`$ jaxlm ...` commands, each followed by lines its output must contain in order."""
    commands: list[tuple[int, str, list[str]]] = []
    for offset, line in enumerate(block.source.splitlines()):
        if line.startswith("$ "):
            commands.append((block.line + offset, line[2:], []))
        elif commands and line.strip() and line.strip() != "...":
            commands[-1][2].append(line.rstrip())
    assert commands, f"{block.path.name}:{block.line}: a console test block runs no command"
    for number, command, expected in commands:
        where = f"{block.path.name}:{number}: `{command}`"
        argv = shlex.split(command)
        assert argv[0] == "jaxlm", f"{where}: console test blocks run jaxlm commands only"
        code, output, errors = run_cli(argv[1:])
        assert code == 0, f"{where} exited with {code}:\n{output}{errors}"
        lines = [line.rstrip() for line in output.splitlines()]
        position = 0
        for line in expected:
            found = [i for i in range(position, len(lines)) if lines[i].startswith(line)]
            assert found, f"{where}: expected a line starting\n  {line}\nin its output:\n{output}"
            position = found[0] + 1


def run_page(path: Path) -> None:
    """Every executable block of a page, in order, in one namespace, in the current directory."""
    namespace = {"__name__": f"docs_{path.stem}"}
    for block in read_blocks(path):
        if block.language == "python" and not block.mark:
            run_python(block, namespace)
        elif block.language == "console" and block.mark == "test":
            run_console(block)


def run_pages(results: Path, pages: list[Path]) -> None:
    """Runs each page in a fresh folder under the current one; writes {page: error or None}."""
    outcome = {}
    for number, page in enumerate(pages):
        folder = Path(f"page{number}").absolute()
        folder.mkdir()
        os.chdir(folder)
        start = time.perf_counter()
        try:
            run_page(page)
            outcome[str(page)] = None
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            outcome[str(page)] = traceback.format_exc()
        print(f"{page.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    results.write_text(json.dumps(outcome))


@pytest.fixture(scope="session")
def page_errors(tmp_path_factory) -> dict[str, str | None]:
    folder = tmp_path_factory.mktemp("docs")
    results = folder / "results.json"
    env = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    subprocess.run(
        [sys.executable, __file__, str(results), *map(str, PAGES)],
        cwd=folder,
        env=env,
        check=True,
        timeout=900,
    )
    return json.loads(results.read_text())


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_runs(path, page_errors):
    for block in read_blocks(path):
        marks = KNOWN.get(block.language)
        assert marks is not None and block.mark in marks, (
            f"{path.name}:{block.line}: unknown block marking {block.language!r} {block.mark!r} "
            f"(see tests/test_docs.py)"
        )
    error = page_errors[str(path)]
    assert error is None, f"a code block of {path.name} failed:\n{error}"


def test_console_blocks_are_checked(tmp_path):
    """The checker itself: a wrong expected line fails, a right one passes."""
    page = tmp_path / "page.md"
    page.write_text(
        "```console test\n$ jaxlm describe gpt2-small\n...\nparameters: 124439808\n```\n"
        "```console test\n$ jaxlm describe gpt2-small\nparameters: 2\n```\n"
    )
    good, bad = read_blocks(page)
    run_console(good)
    with pytest.raises(AssertionError, match="parameters: 2"):
        run_console(bad)


def test_python_blocks_report_the_markdown_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nx = 1\nraise ValueError(x)\n```\n")
    (block,) = read_blocks(page)
    with pytest.raises(ValueError) as error:
        run_python(block, {})
    assert error.traceback[-1].lineno + 1 == 5  # pytest counts lines from 0


def test_a_failing_block_fails_its_page(tmp_path, monkeypatch):
    good, bad = tmp_path / "good.md", tmp_path / "bad.md"
    good.write_text("```python\nx = 1\n```\n```python notest\nraise ValueError\n```\n")
    bad.write_text("```python\nx = 1\n```\n```python\nassert x == 2, 'x is not 2'\n```\n")
    monkeypatch.chdir(tmp_path)  # run_pages changes into a folder per page
    run_pages(tmp_path / "results.json", [good, bad])
    outcome = json.loads((tmp_path / "results.json").read_text())
    assert outcome[str(good)] is None
    assert "x is not 2" in outcome[str(bad)] and "bad.md" in outcome[str(bad)]


if __name__ == "__main__":
    run_pages(Path(sys.argv[1]), [Path(page) for page in sys.argv[2:]])
