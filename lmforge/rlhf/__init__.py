"""Preference alignment and RL on TRL (`lmforge rlhf`): data encoding (`data`), the TRL trainer adapters
(`trainers`), reward functions (`rewards`), plugins (`plugins`) and PPO (`ppo`, which TRL 1.16 lacks).

The package shares its name with the SDK function ``lmforge.rlhf(...)``: once this package is imported,
``lmforge.rlhf`` is the package, so the package itself is callable and runs the workflow —
``from lmforge import rlhf; rlhf(rlhf_type='dpo', model=..., dataset=[...])`` works either way.
"""
from lmforge.sdk import callable_package
import os

# trl.experimental (orpo, cpo, gkd) warns on every import that its API may change; lmforge pins TRL and tests it.
os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')

callable_package(__name__, 'lmforge.workflows.rlhf:rlhf')
