"""The docs cannot drift: generated pages match the code, every block marked runnable in
the README and docs/ runs as written, and every relative link resolves."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prunepass.docs import PAGES

ROOT = Path(__file__).parent.parent
PAGES_WITH_BLOCKS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w+) runnable\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_reference_pages_are_current(name):
    on_disk = (ROOT / "docs" / name).read_text()
    assert on_disk == PAGES[name](), (f"docs/{name} is stale: run "
                                      "`python -m prunepass.docs docs`")


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    for page in PAGES_WITH_BLOCKS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}"


def _blocks(page: Path) -> list[tuple[str, str]]:
    return BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES_WITH_BLOCKS if _blocks(p)],
                         ids=lambda p: p.name)
def test_runnable_blocks_run_as_written(page, tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PRUNEPASS_PROGRESS="0", OMP_NUM_THREADS="1")
    for lang, body in _blocks(page):  # in order, in one folder: later blocks use earlier files
        if lang in ("sh", "bash"):
            cmd = ["bash", "-e", "-c", body]
        else:
            assert lang == "python", f"{page.name}: a runnable {lang} block"
            cmd = [sys.executable, "-c", body]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (f"{page.name}: this block failed:\n{body}\n"
                                      f"stdout:\n{proc.stdout[-2000:]}\n"
                                      f"stderr:\n{proc.stderr[-3000:]}")
