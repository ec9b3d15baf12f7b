"""The import graph of compactlm: no cycle, imports point down, and every module imports alone.

The graph is read statically (ast) from every module, function-level (lazy) imports and
`if TYPE_CHECKING:` imports included: a lazy import that closes a circle is still a circle, one
that a later change moves to the top of a file turns into an ImportError.
"""

import ast
import importlib
import os
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compactlm"


def _module_files() -> dict[str, Path]:
    """compactlm module name → its file (a package is its __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module an imported name lives in: `compactlm.data.DataConfig` → `compactlm.data`."""
    while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in modules else None


def import_graph() -> dict[str, set[str]]:
    """Every compactlm module → the compactlm modules it imports anywhere in its file."""
    modules = _module_files()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # `from compactlm.train import checkpoint` imports the submodule itself
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target.split(".")[0] != "compactlm":
                    continue
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != name:
                    graph[name].add(resolved)
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest path start → ... → start inside a strongly connected component."""
    start, members = component[0], set(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def _closure(graph: dict[str, set[str]], module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for w in graph[todo.pop()]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _in(module: str, *areas: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in areas)


def test_graph_sees_lazy_and_relative_imports():
    """The walker itself: a lazy import inside a function and a `from pkg import submodule`."""
    graph = import_graph()
    assert "compactlm.data.dataset" in graph["compactlm.config"]  # lazy, in a function
    assert "compactlm.train.checkpoint" in graph["compactlm.train.loop"]  # from train import ...
    assert "compactlm.data.config" in graph["compactlm.data"]  # the package's re-exports


def test_no_import_cycle():
    graph = import_graph()
    cycles = [" → ".join(_one_cycle(graph, c)) for c in _strongly_connected(graph)]
    assert not cycles, "import cycles (lazy imports count):\n" + "\n".join(cycles)


# The direction of imports (docs/architecture.md, "Import direction"): area → the compactlm areas
# it may import. Anything not listed may import anything below the entry points.
ALLOWED = {
    "compactlm.kernels": ("compactlm.kernels",),
    "compactlm.models": ("compactlm.models", "compactlm.kernels"),
    "compactlm.data": ("compactlm.data",),
}
# The bottoms: the config sections that compactlm.config composes import no compactlm module.
BOTTOMS = ("compactlm.models.config", "compactlm.train.config", "compactlm.data.config")
# Entry points: only the command line imports them.
ENTRY_POINTS = {
    "compactlm.cli": ("compactlm.__main__",),
    "compactlm.commands": ("compactlm.cli",),
    "compactlm.dry_run": ("compactlm.commands",),
}


def test_layering():
    graph = import_graph()
    bad = []
    for module, imported in sorted(graph.items()):
        for area, allowed in ALLOWED.items():
            if _in(module, area):
                bad += [f"{module} → {w}" for w in sorted(imported) if not _in(w, *allowed)]
        for entry, importers in ENTRY_POINTS.items():
            if entry in imported and module not in importers:
                bad.append(f"{module} → {entry} (an entry point; only {importers} import it)")
        if _in(module, "compactlm.train"):  # training never reaches up into compression / I/O
            up = ("compactlm.compress", "compactlm.interop")
            bad += [f"{module} → {w}" for w in sorted(imported) if _in(w, *up)]
    for bottom in BOTTOMS:
        bad += [f"{bottom} → {w} (a bottom module)" for w in sorted(graph[bottom])]
    # The override parser composes the sections without any training, model or kernel code.
    parser = _closure(graph, "compactlm.config")
    allowed = ("compactlm.data", *BOTTOMS)
    bad += [f"compactlm.config reaches {w}" for w in sorted(parser) if not _in(w, *allowed)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def _module_level_imports(path: Path) -> set[str]:
    """Third-party / stdlib modules a file imports when it is imported (not in functions, not
    under `if TYPE_CHECKING:`)."""
    out = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.If | ast.Try):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)

    visit(ast.parse(path.read_text()).body)
    return {m for m in out if m.split(".")[0] not in ("compactlm", "__future__")}


def import_each_alone(modules: list[str], preload: list[str]) -> int:
    """Run in a fresh interpreter: import `preload` (third-party and stdlib modules only), then
    import each compactlm module in a forked child of that state, two at a time, so that no
    compactlm module is loaded before the one under test. A child fails on any exception and
    on a JAX backend initialised at import time (STYLE: no import-time device work). Returns the
    number of failures; their tracebacks go to stderr."""
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:
            pass  # a name, not a module (`from x import f`), or missing: its importer reports it
    assert not [m for m in sys.modules if m.split(".")[0] == "compactlm"]
    failures, running, todo = 0, {}, list(modules)
    while todo or running:
        if todo and len(running) < 2:
            module = todo.pop(0)
            pid = os.fork()
            if pid == 0:  # the child: one import, then leave without running any exit handler
                code = 0
                try:
                    importlib.import_module(module)
                    bridge = sys.modules.get("jax._src.xla_bridge")
                    if bridge is not None and bridge.backends_are_initialized():
                        raise RuntimeError("a JAX backend was initialised at import time")
                except BaseException:
                    report = f"--- import {module} ---\n{traceback.format_exc()}"
                    os.write(2, report.encode())
                    code = 1
                os._exit(code)
            running[pid] = module
            continue
        pid, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            failures += 1
            print(f"FAILED: import {running[pid]}", file=sys.stderr)
        del running[pid]
    return failures


def test_each_module_imports_alone():
    """Each module, the first compactlm module of its interpreter, imports on a CPU machine with
    no Triton interpreter set (the kernels import triton, never jax_triton, at import time)."""
    files = _module_files()
    modules = sorted(files)
    preload = sorted(set().union(*(_module_level_imports(p) for p in files.values())))
    assert "jax_triton" not in preload  # kernels/_launch.py imports it lazily, on CUDA only
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = (
        "import sys; from tests.test_imports import import_each_alone; "
        "sys.exit(import_each_alone(sys.argv[1].split(), sys.argv[2].split()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, " ".join(modules), " ".join(preload)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    failed = f"{result.returncode} modules fail to import alone:\n{result.stderr[-20000:]}"
    assert result.returncode == 0, failed
    assert len(modules) > 50, f"only {len(modules)} modules found"
