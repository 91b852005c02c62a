"""SDK functions that share their name with a package: `lmforge.infer`, `.serve`, `.eval`, `.export`, `.rlhf`,
`.demo`.

Once `lmforge.infer.engine` is imported, Python sets the attribute `lmforge.infer` to the *package*, so
`from lmforge import infer` would stop meaning the SDK function. Such a package calls `callable_package(__name__,
WORKFLOW_FUNCTION)` and becomes callable: `lmforge.infer(...)` runs the workflow whatever was imported first.
"""
from __future__ import annotations

import importlib
import sys
import types


def callable_package(name: str, target: str) -> None:
    """Make the package ``name`` callable as the function ``target`` ('module:function', imported on call)."""
    module_name, func_name = target.split(':')

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(module_name), func_name)(*args, **kwargs)

    sys.modules[name].__class__ = CallablePackage
