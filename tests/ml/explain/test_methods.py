"""ml.explain.methods: the method the platform shows, importable without torch (web pages read it)."""
from __future__ import annotations

import subprocess
import sys

from ml.explain.methods import METHOD_PREFERENCE, METHOD_WORDING, METHODS, preferred_method


def test_preference_orders_every_method_and_words_each():
    assert sorted(METHOD_PREFERENCE) == sorted(METHODS) == sorted(METHOD_WORDING)
    assert preferred_method({METHOD_PREFERENCE[2]: "a", METHOD_PREFERENCE[1]: "b"}) == METHOD_PREFERENCE[1]
    assert preferred_method(["zz", "custom"]) == "custom"
    assert preferred_method([]) is None


def test_methods_module_does_not_load_torch():
    code = "import sys, ml.explain.methods; print('torch' in sys.modules, 'captum' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
