"""Resolve a model id to a local directory: a local path, the Hugging Face Hub, or ModelScope.

ms-swift's convention: ids go to ModelScope unless ``--use_hf`` (or ``USE_HF=1``). A cached copy is always tried
first without touching the network; offline (``HF_HUB_OFFLINE=1`` or no connection) a missing model is an error that
says what to run.
"""
from __future__ import annotations

import json
import os

from lmforge.errors import ModelError

# Files a model directory needs besides its weights; weights in other formats are skipped when safetensors exist.
_IGNORE = ['*.pth', '*.pt', 'original/*', '*.gguf', '*.msgpack', '*.h5', '*.ot', 'onnx/*']


def use_hf_default(use_hf: bool | None) -> bool:
    if use_hf:
        return True
    return os.environ.get('USE_HF', '0').lower() in ('1', 'true', 'yes')


def looks_local(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else (or anything that exists on disk) is a local path."""
    return os.path.exists(os.path.expanduser(name)) or name.startswith(('.', '/', '~')) or name.count('/') > 1


def check_model_dir(path: str, flag: str = 'model') -> str:
    """A local directory must hold a transformers config (or be a PEFT adapter checkpoint)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise ModelError(f'--{flag}: {path} is not a directory')
    if not any(os.path.isfile(os.path.join(path, f)) for f in ('config.json', 'adapter_config.json')):
        raise ModelError(f'--{flag}: {path} has no config.json: not a transformers model directory '
                         '(expected config.json next to the weights and tokenizer files)')
    return path


def check_adapter_dir(path: str, flag: str = 'adapters') -> str:
    """A LoRA (PEFT) checkpoint: a directory whose adapter_config.json is a JSON object naming its peft_type."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise ModelError(f'--{flag}: {path} does not exist')
    config = os.path.join(path, 'adapter_config.json')
    if not os.path.isfile(config):
        raise ModelError(f'--{flag}: {path} holds no adapter_config.json: not a LoRA checkpoint')
    try:
        with open(config, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f'--{flag}: {config} is not valid JSON ({e})') from None
    if not isinstance(data, dict) or not data.get('peft_type'):
        raise ModelError(f'--{flag}: {config} names no peft_type: not the config of a PEFT adapter checkpoint')
    return path


def resolve_model(name: str, use_hf: bool | None = False, revision: str | None = None, token: str | None = None,
                  flag: str = 'model') -> str:
    """Return the local directory of ``name``, downloading it to the hub cache when needed and possible."""
    if not name:
        raise ModelError(f'--{flag} is required')
    if looks_local(name):
        if not os.path.exists(os.path.expanduser(name)):
            raise ModelError(f'--{flag}: {name} does not exist')
        return check_model_dir(name, flag)
    if use_hf_default(use_hf):
        return _from_hf(name, revision, token, flag)
    return _from_modelscope(name, revision, token, flag)


def _hf_offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '0').lower() in ('1', 'true', 'yes')


def _from_hf(repo_id: str, revision, token, flag: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        return snapshot_download(repo_id, revision=revision, token=token, local_files_only=True)
    except HFValidationError as e:
        raise ModelError(f'--{flag}: {repo_id!r} is neither a local directory nor a valid hub id ({e})') from None
    except LocalEntryNotFoundError:
        pass
    if _hf_offline():
        raise ModelError(f'--{flag}: {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1. '
                         f'Run `lmforge download --model {repo_id} --use_hf` on a machine with network access '
                         '(or copy the model and pass its directory).')
    try:
        return snapshot_download(repo_id, revision=revision, token=token, ignore_patterns=_IGNORE)
    except GatedRepoError:
        raise ModelError(f'--{flag}: {repo_id} is gated: accept its licence on huggingface.co and log in '
                         '(`hf auth login`) or pass --hub_token') from None
    except RepositoryNotFoundError:
        raise ModelError(f'--{flag}: no Hugging Face repository {repo_id!r} (or it is private: pass --hub_token)') \
            from None
    except RevisionNotFoundError:
        raise ModelError(f'--{flag}: {repo_id} has no revision {revision!r}') from None
    except LocalEntryNotFoundError:
        raise ModelError(f'--{flag}: {repo_id} is not cached and the Hugging Face Hub cannot be reached. '
                         f'Run `lmforge download --model {repo_id} --use_hf` where there is network access.') \
            from None
    except OSError as e:
        raise ModelError(f'--{flag}: downloading {repo_id} from the Hugging Face Hub failed: {e}') from None


def _from_modelscope(model_id: str, revision, token, flag: str) -> str:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ModelError(f'--{flag}: {model_id} is a ModelScope id but modelscope is not installed; '
                         'pip install modelscope, or add --use_hf for the Hugging Face Hub') from None
    try:
        return snapshot_download(model_id, revision=revision, local_files_only=True)
    except Exception:  # modelscope raises assorted types for "not cached"
        pass
    try:
        return snapshot_download(model_id, revision=revision, token=token, ignore_patterns=_IGNORE)
    except Exception as e:  # noqa: BLE001 - modelscope's network errors have no common base
        raise ModelError(f'--{flag}: {model_id} is not in the local ModelScope cache and could not be downloaded '
                         f'({type(e).__name__}: {str(e)[:200]}). Run `lmforge download --model {model_id}` where '
                         'there is network access, add --use_hf for the Hugging Face Hub, or pass a local '
                         'directory.') from None


def download(name: str, use_hf: bool = False, revision: str | None = None, token: str | None = None,
             local_dir: str | None = None) -> str:
    """Fill the hub cache (and optionally ``local_dir``) with ``name``; return the local path."""
    path = resolve_model(name, use_hf=use_hf, revision=revision, token=token)
    if local_dir:
        import shutil
        shutil.copytree(path, local_dir, dirs_exist_ok=True)
        return os.path.abspath(local_dir)
    return path
