"""The README and docs/ show code that compiles and name only things that exist.

Every ```python block of ``README.md`` and ``docs/*.md`` is compiled (not run: most need the embedded
model and minutes), and every dotted reference to the package in the text — ``cp.aie_many``,
``cp.plot.compare``, ``confounded_patching.estimation.linalg.pca`` — must resolve on a fresh import.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
CP = re.compile(r"(?<![\w.])cp((?:\.[A-Za-z_]\w*)+)")
MODULE = re.compile(r"(?<![\w./])confounded_patching((?:\.[A-Za-z_]\w*)+)")


def _blocks():
    for page in PAGES:
        for k, match in enumerate(CODE.finditer(page.read_text(encoding="utf-8"))):
            yield pytest.param(page, match.group(1), id=f"{page.name}-{k}")


@pytest.mark.parametrize("page, code", list(_blocks()))
def test_python_blocks_compile(page, code):
    compile(code, f"{page.name} (a python block)", "exec")


def _references() -> dict:
    refs = {}
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in CP.finditer(text):
            refs.setdefault("cp" + match.group(1), page.name)
        for match in MODULE.finditer(text):
            refs.setdefault("confounded_patching" + match.group(1), page.name)
    return refs


RESOLVE = """
import importlib, json, os, sys

# third-party packages first: each reference is then resolved in a forked child that imports the package
# afresh, so no reference resolves only because another one imported a module before it
import numpy, torch  # noqa: F401

def resolve(ref):
    import confounded_patching as cp
    parts = ref.split(".")
    if parts[0] == "cp":
        obj = cp
        for p in parts[1:]:
            obj = getattr(obj, p)
        return
    for k in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for p in parts[k:]:
            obj = getattr(obj, p)
        return
    raise ImportError(ref)

bad = []
for ref in json.load(sys.stdin):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            resolve(ref)
            message = b""
        except Exception as err:
            message = f"{ref}: {type(err).__name__}: {err}".encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as fh:
        message = fh.read().decode()
    os.waitpid(pid, 0)
    if message:
        bad.append(message)
print(json.dumps(bad))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="resolves each reference in a forked process")
def test_every_package_reference_in_the_docs_resolves_on_a_fresh_import():
    refs = _references()
    assert any(r.startswith("cp.") for r in refs) and "cp.aie_many" in refs
    result = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", RESOLVE],
                            input=json.dumps(sorted(refs)), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    bad = [f"{b} (in {refs[b.split(':')[0]]})" for b in json.loads(result.stdout)]
    assert bad == []
