"""The floor plan of ``sinet_tf`` (ARCHITECTURE.md): no import circle, every import goes down
a floor (or stays inside its own package), and the ``sinet`` command starts without
TensorFlow for ``--help`` and ``check-gpu``, runs ``predict``, ``evaluate`` and ``bench`` on
a ``.tflite`` file without it (and refuses a repeated ``train``, or one with a malformed
environment, without it)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "sinet_tf"

# Lowest first. A module may import modules of a lower floor, or of its own package
# (sinet_tf.export.x -> sinet_tf.export.y); never a higher floor or a sibling on its floor.
FLOORS = [
    ["sinet_tf", "sinet_tf.compat", "sinet_tf.files", "sinet_tf.lazy", "sinet_tf.progress", "sinet_tf.registry"],
    ["sinet_tf.layers", "sinet_tf.data", "sinet_tf.losses", "sinet_tf.metrics", "sinet_tf.runtime"],
    ["sinet_tf.backbones", "sinet_tf.model_cost"],
    ["sinet_tf.models", "sinet_tf.weights", "sinet_tf.presets"],
    ["sinet_tf.loading"],
    ["sinet_tf.inference"],
    ["sinet_tf.evaluate", "sinet_tf.postprocess"],
    ["sinet_tf.export", "sinet_tf.train"],
    ["sinet_tf.bench"],
    ["sinet_tf.predict", "sinet_tf.demo"],
    ["sinet_tf.cli"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(path: Path, modules: dict[str, Path], name: str) -> set[str]:
    """Every ``sinet_tf`` module ``path`` imports, at module level or inside functions."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("sinet_tf"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sinet_tf"))
    found.discard(name)
    return {m for m in found if m in modules}


def _graph():
    modules = _modules()
    return {name: _imports(path, modules, name) for name, path in modules.items()}


def _floor_of(module: str) -> tuple[int, str]:
    best = None
    for i, floor in enumerate(FLOORS):
        for prefix in floor:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    assert best is not None, f"{module} is on no floor: add it to FLOORS (and to ARCHITECTURE.md)"
    return best


def test_every_module_is_on_a_floor():
    for module in _modules():
        _floor_of(module)


def test_no_import_circle():
    graph = _graph()
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                circles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_imports_go_down_the_floors():
    upward = []
    for module, targets in _graph().items():
        floor, package = _floor_of(module)
        for target in targets:
            t_floor, t_package = _floor_of(target)
            if t_package == package and package != "sinet_tf":
                continue  # inside one package
            if t_floor >= floor:
                upward.append(f"{module} (floor {floor}) imports {target} (floor {t_floor})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_a_circle(tmp_path, monkeypatch):
    """The circle finder itself can fail: two modules importing each other are reported."""
    pkg = tmp_path / "sinet_tf"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from sinet_tf.b import g\n")
    (pkg / "b.py").write_text("from sinet_tf import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    graph = _graph()
    assert graph["sinet_tf.a"] == {"sinet_tf.b"} and graph["sinet_tf.b"] == {"sinet_tf.a"}


def _fresh(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_sinet_help_and_check_gpu_start_without_tensorflow():
    out = _fresh("import sys, contextlib, io\n"
                 "from sinet_tf import cli\n"
                 "with contextlib.redirect_stdout(io.StringIO()):\n"
                 "    try:\n        cli.main(['--help'])\n    except SystemExit:\n        pass\n"
                 "import sinet_tf.export.gpu_compat, sinet_tf.runtime\n"
                 "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    assert out == "[]"


def test_tflite_commands_run_without_tensorflow(tmp_path, humanseg):
    """`sinet predict`, `evaluate` and `bench` on a .tflite file run on LiteRT, NumPy and
    OpenCV alone: TensorFlow (seconds to import) is never loaded."""
    import keras

    from sinet_tf.export.quantize import convert

    x = keras.Input((32, 32, 3), batch_size=1, name="image")
    model = keras.Model(x, keras.layers.Conv2D(2, 1, name="classifier")(x))
    (tmp_path / "m.tflite").write_bytes(convert(model, "none"))
    commands = [["predict", "m.tflite", str(humanseg / "images" / "1.jpg"), "-o", "masks"],
                ["evaluate", "m.tflite", "--data", "synthetic:3", "--json"],
                ["bench", "m.tflite", "--runs", "2", "--warmup", "0", "--no-memory", "--json"]]
    out = _fresh("import sys, contextlib, io, os\n"
                 "from sinet_tf import cli\n"
                 f"os.chdir({str(tmp_path)!r})\n"
                 "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
                 f"    codes = [cli.main(c) for c in {commands!r}]\n"
                 "print(codes, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    assert out == "[0, 0, 0] []", out
    assert (tmp_path / "masks" / "1_mask.png").is_file()


PRIVATE_MARKERS = ("tensorflow.python", "tensorflow.lite.python", "tensorflow.compiler", "keras.src",
                   "._get_ops_details", "._inbound_nodes", "._keras_history", "._var_key", "._experimental_",
                   "._flatten_layers")


def test_private_stack_calls_only_in_compat():
    """Private TensorFlow / Keras / LiteRT APIs are called from sinet_tf/compat.py only."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py" and path.parent == PACKAGE:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(m in code for m in PRIVATE_MARKERS):
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not found, "\n".join(found)


_EXISTING_RUN = "already holds a run (state.json); pass --resume"
_BAD_KILL = "SINET_TRAIN_KILL_AT='after-last': expected POINT:EPOCH"
_BAD_TF_CONFIG = "TF_CONFIG is not JSON"


@pytest.mark.parametrize("case,env,message", [
    ("existing run", {}, _EXISTING_RUN),
    ("malformed kill hook", {"SINET_TRAIN_KILL_AT": "after-last"}, _BAD_KILL),
    ("malformed TF_CONFIG", {"TF_CONFIG": "{oops"}, _BAD_TF_CONFIG)])
def test_train_refuses_before_importing_tensorflow(tmp_path, monkeypatch, case, env, message):
    """`sinet train` on a folder that holds a run (without --resume), with a malformed
    fault-injection value or with a TF_CONFIG that is not JSON: exit 2 with a one-line error
    naming what is wrong, and TensorFlow never imported (the refusal comes at once, not
    after seconds of importing it)."""
    run = tmp_path / "run"
    if case == "existing run":
        run.mkdir()
        (run / "state.json").write_text("{}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = _fresh("import sys, contextlib, io\n"
                 "from sinet_tf import cli\n"
                 "err = io.StringIO()\n"
                 "with contextlib.redirect_stderr(err):\n"
                 f"    code = cli.main(['train', '--config', 'training/sinet.yaml', '-o', {str(run)!r}, "
                 "'--strategy', 'multiworker'])\n"
                 "print(code, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
                 "print(err.getvalue().strip())")
    first, text = out.split("\n", 1)
    assert first == "2 []", out
    assert message in text and "\n" not in text, text
    if case == "existing run":
        assert str(run) in text
