"""The commands the docs show are commands the CLI takes: every `oie-jax` line of a code block in the
README and the docs parses with the real argument parser, names files of this checkout that exist, loads
its config with its overrides, and spells what the reader must fill in as a placeholder (`<DIR>`), not as
`...` or `path/to/...` that a shell would run as written."""

import re
import shlex
from pathlib import Path

import pytest

from oie_jax.cli import build_parser
from oie_jax.train.config_file import apply_overrides, load_config_file, split_overrides

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]
IN_CHECKOUT = ("configs/", "oie_jax/", "launch/", "docs/", "notebooks/", "benchmarks/", "tests/")
PLACEHOLDER = re.compile(r"<[A-Z0-9_]+>")


def code_blocks(text: str) -> list[str]:
    """Fenced blocks and blocks indented by four spaces."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    unfenced = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    indented = re.findall(r"(?:^(?: {4}|\t).*\n?)+", unfenced, re.M)
    return fenced + [re.sub(r"^(?: {4}|\t)", "", block, flags=re.M) for block in indented]


def commands(path: Path) -> list[str]:
    found = []
    for block in code_blocks(path.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "oie-jax" in words:
                words = words[words.index("oie-jax") + 1:]
                found.append(shlex.join(words[:-1] if words and words[-1] == "&" else words))
    return found


CASES = [(f"{path.relative_to(ROOT)}: oie-jax {command}", command) for path in DOCS for command in commands(path)]


def test_the_docs_show_commands():
    shown = {case.split(":")[0] for case, _ in CASES}
    assert {"README.md", "configs/README.md", "launch/README.md"} <= shown
    assert len(CASES) >= 30


@pytest.mark.parametrize("case,command", CASES, ids=[case for case, _ in CASES])
def test_a_command_of_the_docs_runs_as_written(case, command):
    words = shlex.split(command)
    unfilled = [w for w in words if w == "..." or "path/to" in w or w.startswith("[") or w in ("DIR", "FILE")]
    assert not unfilled, f"spell what the reader fills in as <NAME>: {unfilled}"
    overrides, argv = split_overrides(words)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the CLI refuses `oie-jax {command}` (its error is printed above)")
    for word in words:
        value = word.split("=", 1)[-1]
        if value.startswith(IN_CHECKOUT) and not PLACEHOLDER.search(value):
            assert (ROOT / value).exists(), f"{value} is not in this checkout"
    if args.command == "train":
        apply_overrides(load_config_file(ROOT / args.config), overrides)
