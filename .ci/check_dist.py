"""Check what the sdist and the wheel ship: license, type marker, test support files.

Usage: python .ci/check_dist.py SDIST WHEEL
"""

import sys
import tarfile
import zipfile

sdist, wheel = sys.argv[1], sys.argv[2]
with tarfile.open(sdist) as tar:
    root = tar.getnames()[0].split("/")[0]
    sdist_files = {name.removeprefix(root + "/") for name in tar.getnames()}
with zipfile.ZipFile(wheel) as whl:
    wheel_files = set(whl.namelist())
    metadata = whl.read(next(n for n in wheel_files if n.endswith(".dist-info/METADATA"))).decode()

missing = [
    f"sdist: {name}"
    for name in (
        "LICENSE",
        "CITATION.cff",
        "CHANGELOG.md",
        "CONTRIBUTING.md",
        "shtopk/py.typed",
        "tests/conftest.py",
        "tests/reference.py",
        "tests/typing/user_script.py",
        "docs/quickstart.md",
    )
    if name not in sdist_files
]
missing += [f"wheel: {name}" for name in ("shtopk/py.typed",) if name not in wheel_files]
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_files):
    missing.append("wheel: LICENSE")
for field in ("License-Expression: MIT", "Requires-Python: >=3.11", "Classifier: Typing :: Typed", "Author: "):
    if field not in metadata:
        missing.append(f"wheel metadata: {field}")
if "tests/" in {n.split("/")[0] + "/" for n in wheel_files}:
    missing.append("wheel: must not ship tests/")
if missing:
    sys.exit("missing from the distributions:\n  " + "\n  ".join(missing))
print(f"distributions OK: {len(sdist_files)} files in the sdist, {len(wheel_files)} in the wheel")
