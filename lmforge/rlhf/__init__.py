"""Preference alignment and RL on TRL (`lmforge rlhf`): data encoding (`data`), the TRL trainer adapters
(`trainers`), reward functions (`rewards`), plugins (`plugins`) and PPO (`ppo`, which TRL 1.16 lacks).

The package shares its name with the SDK function ``lmforge.rlhf(...)``: once this package is imported,
``lmforge.rlhf`` is the package, so the package itself is callable and runs the workflow —
``from lmforge import rlhf; rlhf(rlhf_type='dpo', model=..., dataset=[...])`` works either way.
"""
import os
import sys
import types

# trl.experimental (orpo, cpo, gkd) warns on every import that its API may change; lmforge pins TRL and tests it.
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')


class _CallableModule(types.ModuleType):
    def __call__(self, config: str | None = None, **kwargs) -> dict:
        from lmforge.workflows.rlhf import rlhf
        return rlhf(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
