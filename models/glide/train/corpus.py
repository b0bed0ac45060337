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


# Code prompts for self-distillation, made from held-in files. Three kinds, in the proportions
# of KIND_SHARES: tasks on one function, tasks on a whole snippet (a run of top-level
# statements) that ask for the whole code back, as edits of given code do, and functions to
# write in other languages from a Python docstring. None of the wordings is a bench-spec prompt's.
FUNCTION_TASKS = [
    "Write a Python function `{name}{args}` that does the following: {doc}",
    "Explain what this Python function does, step by step:\n```python\n{src}\n```",
    "Add type hints and a Google-style docstring to this function:\n```python\n{src}\n```",
    "Write pytest unit tests for this function:\n```python\n{src}\n```",
    "Refactor this function to be clearer, and explain the changes:\n```python\n{src}\n```",
    "Find possible bugs or edge cases in this code and fix them:\n```python\n{src}\n```",
    "Rewrite this function without changing its behaviour, then show an example call:\n```python\n{src}\n```",
    "Implement `{name}{args}` in Python. {doc} Include a short usage example.",
]
SNIPPET_TASKS = [
    "Annotate every function below with type hints and give back the complete code:\n\n```python\n{code}\n```",
    "Change the name `{ident}` to `{new_ident}` throughout this code and give back all of it:\n\n```python\n{code}\n```",
    "Give each function and class in this code a docstring, and return the code in full:\n\n```python\n{code}\n```",
    "Use the logging module instead of print in this code (a module-level logger) and return the complete file:\n\n```python\n{code}\n```",
    "Make these functions check their arguments and raise ValueError on bad ones; return the updated code in full:\n\n```python\n{code}\n```",
    "Port this Python code to {lang}, keeping its structure and comments:\n\n```python\n{code}\n```",
    "Tidy the imports of this file (unused ones removed, the rest sorted) and return the entire file:\n\n```python\n{code}\n```",
    "Look for bugs in this file, fix them, and return the corrected file in full:\n\n```python\n{code}\n```",
    "Comment the non-obvious lines of this code and return it unchanged otherwise, in full:\n\n```python\n{code}\n```",
    "Convert the string formatting in this code to f-strings where possible and return the whole code:\n\n```python\n{code}\n```",
    "Split the longest function here into smaller helpers and return the full module:\n\n```python\n{code}\n```",
    "Add a short module docstring and a `if __name__ == \"__main__\":` demo to this file, and return all of it:\n\n```python\n{code}\n```",
]
LANGUAGE_TASKS = [
    "Write a {lang} function `{name}` that does the following: {doc}",
    "In {lang}, implement `{name}`: {doc} Show how to call it.",
    "Give me a {lang} version of a function named `{name}`. {doc}",
]
LANGUAGES = ["Rust", "JavaScript", "TypeScript", "Go", "C", "C++", "Java", "C#", "Ruby", "Kotlin", "Bash"]
# Prompts come from files of at most PROMPT_FILE_CHARS (parsing large ones is slow) and are at
# most PROMPT_CHARS long (about 1,000 tokens).
PROMPT_FILE_CHARS = 40_000
PROMPT_CHARS = 3_600
KIND_SHARES = {"function": 0.35, "snippet": 0.45, "language": 0.20}


def functions(text: str, tree=None):
    """(name, args, first docstring line, source) of the top-level and method functions of a
    file, 3 to 25 lines long."""
    if tree is None:
        tree = _parse(text)
    if tree is None:
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


def _parse(text: str):
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def snippets(text: str, tree, min_lines: int = 8, max_lines: int = 60):
    """Runs of consecutive top-level statements of a file, `min_lines` to `max_lines` lines
    long (the file's own text, comments included), each with the identifiers it assigns or
    defines."""
    if tree is None or not tree.body:
        return []
    lines = text.splitlines()
    body = tree.body
    out = []
    i = 0
    while i < len(body):
        first = body[i].lineno
        if hasattr(body[i], "decorator_list") and body[i].decorator_list:
            first = min(d.lineno for d in body[i].decorator_list)
        j = i
        while j + 1 < len(body) and body[j + 1].end_lineno - first + 1 <= max_lines:
            j += 1
        last = body[j].end_lineno
        if min_lines <= last - first + 1 <= max_lines:
            names = sorted(
                {n.id for k in body[i : j + 1] for n in ast.walk(k) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
                | {a.arg for k in body[i : j + 1] for n in ast.walk(k) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for a in n.args.args if a.arg not in ("self", "cls")}
            )
            out.append(("\n".join(lines[first - 1 : last]), [n for n in names if len(n) > 2]))
        i = j + 1
    return out


RENAMES = {"data": "records", "result": "outcome", "value": "item_value", "items": "entries", "path": "file_path"}


def _new_name(ident: str, rng: random.Random) -> str:
    if ident in RENAMES:
        return RENAMES[ident]
    return rng.choice(["new_", "the_", "my_"]) + ident if rng.random() < 0.5 else ident + rng.choice(["_value", "_list", "_obj"])


def _file_prompts(text: str, rng: random.Random, tries: int) -> list[str]:
    """Up to `tries` prompts (kinds drawn by KIND_SHARES) made from one file's text."""
    if len(text) > PROMPT_FILE_CHARS:
        return []
    tree = _parse(text)
    if tree is None:
        return []
    kinds = list(KIND_SHARES)
    weights = [KIND_SHARES[k] for k in kinds]
    found = fns = None
    out = []
    for _ in range(tries):
        kind = rng.choices(kinds, weights)[0]
        prompt = None
        if kind == "snippet":
            found = snippets(text, tree) if found is None else found
            if found:
                code, names = rng.choice(found)
                task = rng.choice(SNIPPET_TASKS if names else [t for t in SNIPPET_TASKS if "{ident}" not in t])
                ident = rng.choice(names) if names else ""
                prompt = task.format(code=code, ident=ident, new_ident=_new_name(ident, rng), lang=rng.choice(LANGUAGES))
        else:
            fns = list(functions(text, tree)) if fns is None else fns
            pool = [fn for fn in fns if fn[2]] if kind == "language" else fns
            if pool:
                name, args, doc, src = rng.choice(pool)
                if kind == "language":
                    prompt = rng.choice(LANGUAGE_TASKS).format(lang=rng.choice(LANGUAGES), name=name, doc=doc)
                else:
                    task = rng.choice(FUNCTION_TASKS if doc else [t for t in FUNCTION_TASKS if "{doc}" not in t])
                    prompt = task.format(name=name, args=args, doc=doc, src=src)
        if prompt is not None and len(prompt) <= PROMPT_CHARS:
            out.append(prompt)
    return out


# The files make_prompts' worker processes read (inherited when they fork).
_FILES: list[SourceFile] = []


def _prompts_of(job: tuple[int, int, int]) -> list[str]:
    index, seed, tries = job
    f = _FILES[index]
    # Each file's draws depend only on the seed and the file's content, not on the workers.
    return _file_prompts(f.text, random.Random(f"{seed}:{hashlib.sha256(f.text.encode()).hexdigest()}"), tries)


def make_prompts(files: list[SourceFile], count: int, seed: int, exclude: set[str], per_file: int = 4) -> list[str]:
    """`count` distinct prompts from `files` (the kinds of KIND_SHARES), none equal to an
    excluded prompt: up to `per_file` from each file, taken round-robin over the files in a
    seeded order (every file's first prompt before any file's second), parsed in parallel."""
    global _FILES
    import multiprocessing

    files = list(files)
    random.Random(seed).shuffle(files)
    _FILES = files
    jobs = [(i, seed, per_file) for i in range(len(files))]
    try:
        with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
            per = pool.map(_prompts_of, jobs, chunksize=64)
    finally:
        _FILES = []
    prompts: list[str] = []
    seen = set(exclude)
    for round_ in range(per_file):
        for ps in per:
            if round_ < len(ps) and ps[round_].strip() not in seen:
                seen.add(ps[round_].strip())
                prompts.append(ps[round_])
                if len(prompts) >= count:
                    return prompts
    return prompts
