"""gencore.ood as a package: every submodule is an attribute, ``distributed`` lazily."""
from __future__ import annotations

import subprocess
import sys

import pytest

import gencore


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_distributed_is_an_attribute_imported_on_first_use():
    out = run_python(
        "import sys, gencore\n"
        "print('gencore.ood.distributed' in sys.modules, 'torch.distributed.distributed_c10d' in sys.modules)\n"
        "module = gencore.ood.distributed\n"
        "print('gencore.ood.distributed' in sys.modules, module.knn.__module__, 'distributed' in dir(gencore.ood))\n"
    )
    before, after = out.splitlines()
    assert before.split()[0] == "False"            # import gencore did not import it
    assert after.split() == ["True", "gencore.ood.distributed", "True"]


@pytest.mark.parametrize("name", ["ops", "reference", "metrics", "covariance", "detectors", "logits_fit",
                                  "distributed"])
def test_submodules_are_attributes(name):
    module = getattr(gencore.ood, name)
    assert module.__name__ == f"gencore.ood.{name}"


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gencore.ood.nope  # noqa: B018
    from gencore.ood import distributed

    assert distributed is gencore.ood.distributed
