"""Every console script in pyproject.toml, called the way its generated wrapper calls it: `sys.exit(main())`."""

import importlib
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES, tiny_config

from pqvae_hf import PQVAEModel

SCRIPTS = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]["scripts"]


def _console_script(name: str, argv: list[str], monkeypatch):
    """What `pip install` writes into bin/NAME: `sys.exit(main())` with sys.argv set. Returns the exit code."""
    module, function = SCRIPTS[name].split(":")
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(getattr(importlib.import_module(module), function)())
    return exit_info.value.code


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("entry") / "tiny"
    PQVAEModel(tiny_config()).save_pretrained(path)
    return str(path)


def _arguments(name, audiofolder, tiny_path, tmp_path):
    """A successful and a failing command line per script (a new script must be added here)."""
    return {
        "pqvae": (["info", tiny_path], ["info", "--model", str(tmp_path / "no" / "such_model")], "does not exist"),
        "pqvae-train": (["--dataset_dir", str(audiofolder), "--split_column", "split", "--output_dir",
                         str(tmp_path / "run"), "--do_train", "--max_steps", "2", "--eval_split", "",
                         "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true",
                         "--config_overrides", TINY_OVERRIDES],
                        ["--dataset_dir", str(tmp_path / "no_such_corpus"), "--output_dir", str(tmp_path / "bad"),
                         "--do_train", "--report_to", "none"], "no_such_corpus is not a directory"),
    }[name]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_scripts_exit_0_on_success_and_nonzero_with_the_reason(name, audiofolder, tiny_path, tmp_path,
                                                                       monkeypatch):
    good, bad, reason = _arguments(name, audiofolder, tiny_path, tmp_path)
    assert _console_script(name, good, monkeypatch) in (0, None)
    code = _console_script(name, bad, monkeypatch)
    # sys.exit(str) prints the string to stderr and exits with status 1: a reason, not a traceback.
    assert isinstance(code, str) and reason in code and code.startswith(f"{name}"), code


def test_train_without_the_train_extra_says_which_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` now raises ImportError
    code = _console_script("pqvae-train", ["--output_dir", str(tmp_path), "--do_train"], monkeypatch)
    assert isinstance(code, str) and 'pip install "pqvae-hf[train]"' in code and "accelerate" in code, code
