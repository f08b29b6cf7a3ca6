"""Rules of the code's shape that can fail: no import cycle, modules and functions of a readable size, and one
home for each small shared concept (the stored crop's geometry, atomic file replacement, file hashing, the
package version).

Everything is read with ``ast``, nothing is imported. An allow-list entry names a file and the scope inside it
(``function``, ``Class.method``, ``Class.field`` or a module-level name) and says why it is not the concept.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "model")
SCRIPTS = ("train.py", "evaluate.py")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _sources(*folders: str, scripts: tuple[str, ...] = ()) -> dict[str, Path]:
    """Repository-relative path -> file, for every .py under ``folders`` and the named scripts."""
    files = [p for f in folders for p in (REPO / f).rglob("*.py") if "__pycache__" not in p.parts]
    files += [REPO / s for s in scripts]
    return {p.relative_to(REPO).as_posix(): p for p in sorted(files)}


CODE = _sources(*PACKAGES, scripts=SCRIPTS)          # pipeline/, model/ and the two scripts
WITH_BENCH = _sources(*PACKAGES, "bench", scripts=SCRIPTS)
TREES = {rel: ast.parse(p.read_text(), rel) for rel, p in WITH_BENCH.items()}


def _module(rel: str) -> str:
    parts = rel[:-len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(rel): rel for rel in CODE}


# ----------------------------------------------------------------------------------------------------------
# The import graph.


def _known(dotted: str | None) -> str | None:
    """The project module that ``dotted`` names, or the longest project module it starts with."""
    parts = (dotted or "").split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        if name in MODULES:
            return name
    return None


def imports_of(rel: str) -> set[str]:
    """Project modules that ``rel`` imports, at the top or inside functions; ``from x import y`` counts as an
    import of ``x.y`` when that is a module, else of ``x``."""
    me = _module(rel)
    package = me if rel.endswith("__init__.py") else me.rpartition(".")[0]
    out: set[str | None] = set()
    for node in ast.walk(TREES[rel]):
        if isinstance(node, ast.Import):
            out.update(_known(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            for a in node.names:
                full = f"{base}.{a.name}"
                out.add(full if full in MODULES else _known(base))
    return {m for m in out if m and m != me}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) for each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(g), g[0]) for g in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside ``group`` (breadth first)."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & group):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")


def test_the_import_graph_has_no_cycle():
    graph = {m: imports_of(rel) for m, rel in MODULES.items()}
    assert sum(len(v) for v in graph.values()) > 100  # the walk sees the project's imports
    assert "pipeline.crop" in graph["pipeline.extract"] and "pipeline.files" in graph["model.checkpoint"]
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_pipeline_never_imports_the_model():
    up = [f"{m} imports {', '.join(sorted(i for i in imports_of(rel) if i.split('.')[0] == 'model'))}"
          for m, rel in MODULES.items() if m.split(".")[0] == "pipeline"
          and any(i.split(".")[0] == "model" for i in imports_of(rel))]
    assert not up, "model/ may import pipeline/, never the reverse: " + "; ".join(up)


def test_a_cycle_is_found_and_printed():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]


# ----------------------------------------------------------------------------------------------------------
# Sizes.


def _functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def test_no_module_is_longer_than_the_limit():
    long = [f"{rel} ({n} lines)" for rel, p in CODE.items() if rel.split("/")[0] in PACKAGES
            and (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): " + ", ".join(long)


def test_no_function_is_longer_than_the_limit():
    long = [f"{rel}:{node.lineno} {name} ({n} lines)" for rel in CODE if rel.split("/")[0] in PACKAGES
            for name, node in _functions(TREES[rel]) if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into helpers): " + ", ".join(long)


# ----------------------------------------------------------------------------------------------------------
# One home per concept.


def _scoped(tree: ast.AST):
    """(scope, node) of every node; scope: the enclosing ``function``/``Class.method``, ``Class.field`` for a
    class-level assignment, the assigned name for a module-level one, else "<module>"."""
    def walk(node, scope, in_body_of):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{scope}.{child.name}" if in_body_of else child.name
                yield inner, child
                yield from walk(child, inner, True)
                continue
            here = scope
            if isinstance(node, (ast.Module, ast.ClassDef)) and isinstance(child, (ast.Assign, ast.AnnAssign)):
                targets = child.targets if isinstance(child, ast.Assign) else [child.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
                field = ",".join(names) or "<module>"
                here = f"{scope}.{field}" if isinstance(node, ast.ClassDef) else field
            yield here, child
            yield from walk(child, here, in_body_of)

    yield from walk(tree, "<module>", False)


def _offenders(files: dict[str, Path], exempt: set[str], allowed: dict[tuple[str, str], str], hit) -> list[str]:
    """``file:line scope: what`` for every node where ``hit(node)`` returns a description, outside the
    ``exempt`` files and the ``allowed`` (file, scope) pairs."""
    out = []
    for rel in files:
        if rel in exempt:
            continue
        for scope, node in _scoped(TREES[rel]):
            what = hit(node)
            if what and (rel, scope) not in allowed:
                out.append(f"{rel}:{node.lineno} {scope}: {what}")
    return out


# Crop geometry: 1.25 and 384 as numbers live in pipeline/crop.py (CROP_SCALE, CROP_SIZE) only.
CROP_NUMBERS_ALLOWED = {
    ("model/config.py", "ModelConfig.input_size"): "the network's input side (a multiple of 32), a model setting "
                                                  "that checkpoints record; not the stored crop",
    ("model/config.py", "DataConfig.image_size"): "the training and evaluation image side, resized from any crop "
                                                  "size; not the stored crop",
    ("model/config.py", "SBIConfig.resize_range"): "SBI's mask resize range (0.8, 1.25), a parameter of the "
                                                   "synthesis recipe",
    ("model/data/face_scale.py", "REFERENCE_TEST_SCALE"): "the reference implementation's own crop scale in its "
                                                          "published test geometry (1.20x); it must not follow "
                                                          "CROP_SCALE",
    ("model/eval/inference.py", "choose_batch_size"): "the input side at which the memory per face was measured",
}


def _crop_number(node) -> str | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value in (1.25, 384):
        return f"the number {node.value!r} (use pipeline.crop.CROP_SCALE / CROP_SIZE)"
    return None


def test_crop_geometry_numbers_live_in_pipeline_crop():
    found = _offenders(CODE, {"pipeline/crop.py"}, CROP_NUMBERS_ALLOWED, _crop_number)
    assert not found, "crop geometry written as a number outside pipeline/crop.py:\n" + "\n".join(found)


# Atomic replacement: every rename over a target happens in pipeline/files.py (atomic_path / atomic_write).
RENAME_ALLOWED = {
    ("pipeline/shard_writer.py", "add_landmarks"): "the shard commit protocol: a per-attempt temporary name "
                                                   "(host-pid-uuid, see tmp_path) that unfinished() and the "
                                                   "resume logic own, and a shard of hundreds of MB not synced "
                                                   "twice",
}


def _rename(node) -> str | None:
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return None
    f = node.func
    if isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr in ("replace", "rename", "renames"):
        return f"os.{f.attr}(...) (use pipeline.files.atomic_path / atomic_write)"
    # Path.replace(target) / Path.rename(target): one argument (str.replace takes two, dataclasses.replace
    # is called on the module)
    if f.attr in ("replace", "rename") and len(node.args) == 1 and not node.keywords \
            and not (isinstance(f.value, ast.Name) and f.value.id == "dataclasses"):
        return f".{f.attr}(target) (use pipeline.files.atomic_path / atomic_write)"
    return None


def test_files_are_replaced_only_through_pipeline_files():
    found = _offenders(WITH_BENCH, {"pipeline/files.py"}, RENAME_ALLOWED, _rename)
    assert not found, "a rename over a file outside pipeline/files.py:\n" + "\n".join(found)


# Hashing: a file's SHA-256 is pipeline.files.file_sha256; pipeline/version.py hashes the package's sources.
SHA256_ALLOWED = {
    ("pipeline/resume.py", "settings_hash"): "hashes the JSON of a run's settings, not a file",
    ("pipeline/manifest.py", "DatasetEntry.hash"): "hashes the JSON of a manifest entry, not a file",
}


def _sha256(node) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "hashlib" \
            and node.attr in ("sha256", "new", "file_digest"):
        return f"hashlib.{node.attr} (a file's hash: pipeline.files.file_sha256)"
    if isinstance(node, ast.ImportFrom) and node.module == "hashlib":
        return "from hashlib import ... (a file's hash: pipeline.files.file_sha256)"
    return None


def test_sha256_is_computed_in_its_homes_only():
    found = _offenders(WITH_BENCH, {"pipeline/files.py", "pipeline/version.py"}, SHA256_ALLOWED, _sha256)
    assert not found, "SHA-256 outside pipeline/files.py and pipeline/version.py:\n" + "\n".join(found)


def _metadata(node) -> str | None:
    if isinstance(node, ast.Import) and any(a.name.startswith("importlib.metadata") for a in node.names):
        return "import importlib.metadata (the package version: pipeline.version.package_version)"
    if isinstance(node, ast.ImportFrom) and (node.module == "importlib.metadata" or (
            node.module == "importlib" and any(a.name == "metadata" for a in node.names))):
        return "importlib.metadata (the package version: pipeline.version.package_version)"
    return None


def test_the_package_version_is_read_in_pipeline_version_only():
    found = _offenders(WITH_BENCH, {"pipeline/version.py"}, {}, _metadata)
    assert not found, "importlib.metadata outside pipeline/version.py:\n" + "\n".join(found)


HOMES = {"pipeline/files.py": ("atomic_path", "atomic_write", "file_sha256"),
         "pipeline/version.py": ("package_version", "code_hash", "code_version"),
         "pipeline/crop.py": ("CROP_SCALE", "CROP_SIZE", "square_crop_box", "crop_face")}


def test_the_homes_names_are_defined_nowhere_else():
    own = {name: home for home, names in HOMES.items() for name in names}
    found = []
    for rel in WITH_BENCH:
        for node in ast.walk(TREES[rel]):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            else:
                continue
            found += [f"{rel}:{node.lineno} {n} (its home is {own[n]})" for n in names if own.get(n, rel) != rel]
    assert not found, "a home's name defined again:\n" + "\n".join(found)
    for home, names in HOMES.items():  # and the homes do define them
        defined = {n.name for n in ast.walk(TREES[home]) if isinstance(n, ast.FunctionDef)} | {
            t.id for n in ast.walk(TREES[home]) if isinstance(n, ast.Assign) for t in ast.walk(n.targets[0])
            if isinstance(t, ast.Name)}
        assert set(names) <= defined, f"{home} lacks {sorted(set(names) - defined)}"
