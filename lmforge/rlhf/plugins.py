"""User plugins: ``--external_plugins file.py`` and ``--reward_funcs NAME``.

A plugin file is plain Python, executed once before the data is read. It can define reward functions (named in
``--reward_funcs`` by their function name) and/or register them under another name::

    from lmforge.rlhf.rewards import register_reward

    @register_reward('exact')
    def exact(completions, solution, **kwargs):
        return [float(c[0]['content'].strip() == s) for c, s in zip(completions, solution)]

``--reward_funcs`` names resolve in this order: the registry (built-ins and `register_reward`), a function of that
name in a plugin file, then ``package.module:function`` (or ``path/to/file.py:function``). A class is instantiated
with no arguments (ms-swift's ORM classes); the result must be callable.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys

from lmforge.errors import ArgumentError


def load_plugins(paths: list[str]) -> list:
    """Execute each plugin file; return the loaded modules."""
    modules = []
    for i, path in enumerate(paths):
        modules.append(_load_file(path, f'lmforge_plugin_{i}_{os.path.splitext(os.path.basename(path))[0]}',
                                  'external_plugins'))
    return modules


def _load_file(path: str, name: str, flag: str):
    if not os.path.isfile(path):
        raise ArgumentError(flag, f'file not found: {path}')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in user code, reported with its file
        del sys.modules[name]
        raise ArgumentError(flag, f'{path} failed to load: {type(e).__name__}: {e}') from None
    return module


def resolve_reward_funcs(names: list[str], args, plugins: list) -> list:
    """The reward functions named by ``--reward_funcs``, ready for TRL (each with a ``__name__``)."""
    from lmforge.rlhf.rewards import REWARDS, named

    funcs = []
    for name in names:
        if name in REWARDS:
            funcs.append(REWARDS[name](args))
            continue
        found = next((getattr(m, name) for m in plugins if callable(getattr(m, name, None))), None)
        if found is None and ':' in name:
            found = _import(name)
        if found is None:
            known = sorted(REWARDS) + sorted({n for m in plugins for n, v in vars(m).items()
                                              if callable(v) and not n.startswith('_')})
            hint = difflib.get_close_matches(name, known, n=1)
            raise ArgumentError('reward_funcs', f'unknown reward {name!r}' +
                                (f'. Did you mean {hint[0]!r}?' if hint else '') +
                                f' Built in: {", ".join(sorted(REWARDS))}; or a function of an --external_plugins '
                                'file, or module:function')
        if isinstance(found, type):
            try:
                found = found()
            except Exception as e:  # noqa: BLE001
                raise ArgumentError('reward_funcs', f'{name}: could not instantiate the class: {e}') from None
        if not callable(found):
            raise ArgumentError('reward_funcs', f'{name} is not callable')
        funcs.append(named(found, name.rsplit(':', 1)[-1]))
    return funcs


def _import(spec: str):
    module_name, _, attr = spec.rpartition(':')
    if module_name.endswith('.py'):
        module = _load_file(module_name, f'lmforge_reward_{os.path.basename(module_name)[:-3]}', 'reward_funcs')
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ArgumentError('reward_funcs', f'{spec}: cannot import {module_name}: {e}') from None
    if not hasattr(module, attr):
        raise ArgumentError('reward_funcs', f'{spec}: {module_name} has no {attr!r}')
    return getattr(module, attr)
