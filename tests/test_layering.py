"""The house's floors hold: every import goes down a floor or stays in its room, and no module
imports itself back through others (ast over every module, imports inside functions included)."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Floor by package, lowest first; a package may import itself and any package on a lower floor.
FLOORS = {
    "contract": 0,  # the data contract: config, event layout, errors, TF environment
    "ondevice": 1,  # running a .tflite without TensorFlow (device, parity checks, TFLite servable)
    "trainer": 2,
    "serving": 2,
    "simulator": 2,
    "components": 3,
    "pipeline": 4,
    "fixtures": 5,  # small models, data and servers the tests and the benchmarks share
    "benchmarks": 6,
}

pytestmark = pytest.mark.unit


def _modules() -> dict[str, str]:
    found = {}
    for package in FLOORS:
        for directory, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    found[module.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """Our modules that ``path`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    targets = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                targets.add(name)
    return targets


MODULES = _modules()
GRAPH = {module: _imports(path, MODULES) - {module} for module, path in MODULES.items()}


def test_every_import_stays_in_its_room_or_goes_down_a_floor():
    upward = []
    for module, targets in GRAPH.items():
        own = module.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != own and FLOORS[other] >= FLOORS[own]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that go up a floor or sideways between rooms:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def _rooms(depth: int) -> dict[str, set[str]]:
    """The import graph with every module folded into its room ``depth`` names deep
    (depth 2: ``trainer.distill``, ``trainer.lite``, ``trainer.data``, ...)."""
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        room = ".".join(module.split(".")[:depth])
        edges = graph.setdefault(room, set())
        for target in targets:
            other = ".".join(target.split(".")[:depth])
            if other != room and not room.startswith(other + ".") and not other.startswith(room + "."):
                edges.add(other)  # a package's own __init__ is not a room beside its rooms
    return graph


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_cycles_between_rooms_at_any_depth():
    """trainer/teacher -> trainer/pretrain -> trainer/teacher is a cycle even when no module
    imports itself back: rooms at every depth import each other one way only."""
    deepest = max(len(m.split(".")) for m in GRAPH)
    found = {depth: _cycles(_rooms(depth)) for depth in range(1, deepest)}
    assert not any(found.values()), "cycles between rooms:\n" + "\n".join(
        f"depth {d}: {c}" for d, cs in found.items() for c in cs
    )


def test_room_cycles_are_detected():
    """The check itself: two rooms importing each other through different modules is a cycle."""
    graph = {"t.a.x": {"t.b.y"}, "t.b.z": {"t.a.w"}, "t.a.w": set(), "t.b.y": set()}
    rooms: dict[str, set[str]] = {}
    for module, targets in graph.items():
        rooms.setdefault(module.rsplit(".", 1)[0], set()).update(t.rsplit(".", 1)[0] for t in targets)
    assert _cycles({k: v - {k} for k, v in rooms.items()}) == ["t.a -> t.b -> t.a"]


def test_benchmarks_do_not_import_tests():
    """Neither ``tests.x`` nor a test module by its bare name (through sys.path tricks)."""
    test_modules = {"tests"} | {
        f[:-3] for _, _, names in os.walk(os.path.join(REPO, "tests")) for f in names if f.endswith(".py")
    }
    offenders = [
        f"{m} -> {t}" for m, path in MODULES.items() if m.startswith("benchmarks")
        for t in _raw(path) if t.split(".")[0] in test_modules
    ]  # fmt: skip
    assert not offenders, offenders


def _raw(path: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
