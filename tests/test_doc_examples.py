"""The examples of the README and the quickstart run as written (CuPy ones where a GPU is present)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART = ROOT / "docs" / "quickstart.md"
TRAINING = ROOT / "docs" / "training.md"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def gpu_for_cupy() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # not installed, or a CUDA runtime without a device
        return False


def test_readme_has_the_two_setup_commands():
    bash = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert [b.strip() for b in bash] == [
        'python -m pip install torch==2.13.0 -e ".[test,reproduce,jax,learn,cpu]" && python -m shtopk.reproduce',
        "python -m pytest",
    ]


def run_blocks(path: Path, expected: int) -> dict:
    namespace: dict = {}
    blocks = python_blocks(path)
    assert len(blocks) == expected
    for block in blocks:
        if ("import cupy" in block or "cp." in block) and not gpu_for_cupy():
            continue
        exec(compile(block, str(path), "exec"), namespace)  # our own documentation
    return namespace


def test_readme_examples_run():
    assert run_blocks(README, 4)["out"].values.shape[-2] == 16


def test_quickstart_examples_run():
    namespace = run_blocks(QUICKSTART, 4)
    assert namespace["loss"].requires_grad and namespace["model"][0].score.weight.grad is not None


def test_training_example_learns():
    namespace = run_blocks(TRAINING, 1)
    assert namespace["recall"] > 0.8  # chance: 4 / 64
