"""The training text: permissively licensed Python source found on the machine, and code prompts
made from it for the target to answer (self-distillation).

Sources are the standard library (PSF-2.0) and the installed distributions whose metadata
declares a permissive licence (MIT, BSD, Apache-2.0, PSF, ISC, HPND, Unlicense, zlib) and no
copyleft one; each is listed with its licence in the manifest the run writes. A file is held out
(evaluation only) when the first byte of its content's sha256 is below HOLDOUT_BYTE, so the split
does not depend on the order files are found in.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata as md
import os
import random
import re
import sysconfig
from dataclasses import dataclass, field

HOLDOUT_BYTE = 6  # 6/256 ≈ 2.3 % of files
MAX_FILE_BYTES = 200_000
PERMISSIVE = re.compile(
    r"\b(MIT|BSD|Apache|Python Software Foundation|PSF|ISC|HPND|Unlicense|zlib|CNRI)\b", re.I
)
COPYLEFT = re.compile(
    r"(?<![A-Za-z])(A|L)?GPL|General Public|(?<![A-Za-z])MPL(?![A-Za-z])|Mozilla Public|"
    r"(?<![A-Za-z])EU?PL(?![A-Za-z])|CDDL|(?<![A-Za-z])OSL(?![A-Za-z])|CC-BY-SA|SSPL",
    re.I,
)
# A copyleft licence named in a file's header (case-sensitive: code says "sample" and "mpl").
COPYLEFT_HEADER = re.compile(
    r"GNU (Lesser |Library |Affero )?General Public License|Mozilla Public License|"
    r"\b(A|L)?GPL(v?[23])?\b|\bMPL-2\.0\b"
)
# Code another project's licence governs, shipped inside a package.
VENDORED = {"_vendor", "vendor", "vendored", "_vendored", "third_party", "thirdparty", "externals", "extern"}


@dataclass
class SourceFile:
    path: str
    text: str
    package: str
    held_out: bool


@dataclass
class Corpus:
    files: list[SourceFile] = field(default_factory=list)
    licences: dict[str, str] = field(default_factory=dict)  # package → licence text
    versions: dict[str, str] = field(default_factory=dict)  # package → version

    def manifest(self) -> dict:
        per = {}
        for f in self.files:
            p = per.setdefault(
                f.package,
                {"licence": self.licences[f.package], "version": self.versions.get(f.package, ""), "files": 0, "bytes": 0, "held_out_files": 0},
            )
            p["files"] += 1
            p["bytes"] += len(f.text.encode())
            p["held_out_files"] += int(f.held_out)
        return per


def licence_of(dist) -> str | None:
    """The permissive licence a distribution declares, or None (unknown or copyleft)."""
    meta = dist.metadata
    texts = [meta.get("License-Expression") or "", meta.get("License") or ""]
    texts += [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    joined = " | ".join(t for t in texts if t)
    if not joined or COPYLEFT.search(joined) or not PERMISSIVE.search(joined):
        return None
    return joined


def _read(path: str) -> str | None:
    """A file's text, unless it is too large, vendored from another project, or its header
    names a copyleft licence."""
    if VENDORED & set(os.path.normpath(path).split(os.sep)):
        return None
    try:
        if os.path.getsize(path) > MAX_FILE_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    return None if COPYLEFT_HEADER.search(text[:4096]) else text


def collect(skip_packages: set[str] = frozenset()) -> Corpus:
    """Every permissively licensed .py file here, deduplicated by content, in a fixed order."""
    corpus = Corpus()
    seen: set[bytes] = set()
    stdlib = sysconfig.get_paths()["stdlib"]
    candidates: list[tuple[str, str]] = []
    for root, dirs, names in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__"))
        candidates += [(os.path.join(root, n), "python-stdlib") for n in sorted(names) if n.endswith(".py")]
    corpus.licences["python-stdlib"] = "PSF-2.0 (Python Software Foundation License)"
    corpus.versions["python-stdlib"] = sysconfig.get_python_version()
    dists = sorted(md.distributions(), key=lambda d: (d.metadata.get("Name") or "").lower())
    for dist in dists:
        name = (dist.metadata.get("Name") or "").lower()
        if not name or name in skip_packages or name in corpus.licences:
            continue
        lic = licence_of(dist)
        if lic is None or not dist.files:
            continue
        corpus.licences[name] = lic
        corpus.versions[name] = dist.version
        candidates += [(str(dist.locate_file(f)), name) for f in sorted(dist.files, key=str) if str(f).endswith(".py")]
    for path, package in candidates:
        text = _read(path)
        if not text or len(text) < 200:
            continue
        digest = hashlib.sha256(text.encode()).digest()
        if digest in seen:
            continue
        seen.add(digest)
        corpus.files.append(SourceFile(path, text, package, digest[0] < HOLDOUT_BYTE))
    used = {f.package for f in corpus.files}
    corpus.licences = {k: v for k, v in corpus.licences.items() if k in used}
    return corpus


# Code prompts for self-distillation, made from functions of held-in files.
TASKS = [
    "Write a Python function `{name}{args}` that does the following: {doc}",
    "Explain what this Python function does, step by step:\n```python\n{src}\n```",
    "Add type hints and a Google-style docstring to this function:\n```python\n{src}\n```",
    "Write pytest unit tests for this function:\n```python\n{src}\n```",
    "Refactor this function to be clearer, and explain the changes:\n```python\n{src}\n```",
    "Find possible bugs or edge cases in this code and fix them:\n```python\n{src}\n```",
    "Rewrite this function without changing its behaviour, then show an example call:\n```python\n{src}\n```",
    "Implement `{name}{args}` in Python. {doc} Include a short usage example.",
]


def functions(text: str):
    """(name, args, first docstring line, source) of the top-level and method functions of a
    file, 3 to 25 lines long."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return
    lines = text.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("__"):
            continue
        n = node.end_lineno - node.lineno + 1
        if not 3 <= n <= 25:
            continue
        src = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        indent = len(src) - len(src.lstrip())
        src = "\n".join(l[indent:] for l in src.splitlines())
        doc = (ast.get_docstring(node) or "").strip().split("\n")[0]
        try:
            args = "(" + ast.unparse(node.args) + ")"
        except Exception:  # noqa: BLE001
            args = "(...)"
        yield node.name, args, doc, src


def make_prompts(files: list[SourceFile], count: int, seed: int, exclude: set[str]) -> list[str]:
    """`count` prompts from functions of `files`, none equal to an excluded prompt."""
    rng = random.Random(seed)
    files = list(files)
    rng.shuffle(files)
    prompts: list[str] = []
    for f in files:
        fns = list(functions(f.text))
        if not fns:
            continue
        name, args, doc, src = rng.choice(fns)
        task = rng.choice(TASKS if doc else [t for t in TASKS if "{doc}" not in t])
        prompt = task.format(name=name, args=args, doc=doc, src=src)
        if prompt.strip() not in exclude:
            prompts.append(prompt)
        if len(prompts) >= count:
            break
    return prompts
