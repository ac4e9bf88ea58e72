"""transformers' own generic model tests (`tests/test_modeling_common.py` and friends from the transformers sdist on
PyPI), made importable as the package `transformers_tests`, for tests/test_transformers_generic.py.

The sdist matching the installed transformers is downloaded once with pip (the Hub is not needed) into
`.cache/transformers-tests/<version>/`. The sdist ships the top-level test modules but not three helper packages
they import; those are replaced by the small stand-ins below, which only disable what they stand for (export and
generation tests) or give the generic config kwargs. Run this file to fetch ahead of the test run
(scripts/test.sh does).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "transformers-tests"
PACKAGE = "transformers_tests"

STAND_INS = {
    # The sdist has no tests/exporters: the torch.export tests of ExportTesterMixin are not run.
    "exporters/test_export.py": 'class ExportTesterMixin:\n    """Stand-in: no export tests."""\n',
    # The sdist has no tests/generation: PQ-VAE cannot `generate`, and the generic suite only checks that a tester
    # of a model that cannot generate does not inherit this mixin.
    "generation/test_utils.py": 'class GenerationTesterMixin:\n    """Stand-in: no generation tests."""\n',
    # The sdist has no tests/utils: non-default values for every argument of PreTrainedConfig.__init__ (transformers
    # 5), which ConfigTester.check_config_arguments_init checks the model config passes through.
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["PQVAEModel"],\n'
        '    "id2label": {0: "label_0", 1: "label_1"},\n'
        '    "label2id": {"label_0": 0, "label_1": 1},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
}


def package_root(version: str = transformers.__version__) -> Path:
    """The folder to put on sys.path so that `import transformers_tests` works (downloads on first use).

    Raises RuntimeError naming the cause when the sdist cannot be fetched."""
    root = CACHE / version
    package = root / PACKAGE
    if (package / "test_modeling_common.py").exists():
        return root
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                   "--dest", scratch, f"transformers=={version}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        archives = list(Path(scratch).glob("transformers-*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise RuntimeError(f"`{' '.join(command[2:])}` failed: {(result.stderr or result.stdout).strip()[-300:]}")
        staging = root / f"{PACKAGE}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts  # transformers-X/tests/<file>.py
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (staging / parts[2]).write_bytes(archive.extractfile(member).read())
    if not (staging / "test_modeling_common.py").exists():
        raise RuntimeError(f"the transformers {version} sdist has no tests/test_modeling_common.py")
    (staging / "__init__.py").touch()
    for relative, text in STAND_INS.items():
        path = staging / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    staging.rename(package)  # atomic: a half-extracted tree is never taken for a whole one
    return root


if __name__ == "__main__":
    print(f"[transformers-tests] {package_root() / PACKAGE}")
