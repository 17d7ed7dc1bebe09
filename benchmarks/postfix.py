"""Postfix's smtp-source/smtp-sink, found by tests/_postfix.py (one place for both).

Loaded by file path: ``tests`` is not a package, and a stray ``tests``
package in site-packages must not shadow ours.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_PATH = Path(__file__).resolve().parent.parent / "tests" / "_postfix.py"


def _load() -> ModuleType:
    name = "aiosmtpd_tests_postfix"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_postfix = _load()
PostfixTool = _postfix.PostfixTool
postfix_tool = _postfix.postfix_tool
fetch = _postfix.fetch
cache_dir = _postfix.cache_dir
