"""Upload an exported directory to the Hugging Face Hub (huggingface_hub) or ModelScope (modelscope)."""
from __future__ import annotations

import os

from lmforge.errors import ModelError


def log(msg: str) -> None:
    print(f'[lmforge export] {msg}', flush=True)


def _offline(name: str) -> bool:
    return os.environ.get(name, '0').strip().lower() in ('1', 'true', 'yes', 'on')


def push_to_hub(folder: str, repo_id: str, use_hf: bool, token: str | None = None, private: bool = False,
                commit_message: str = 'upload model with lmforge') -> str:
    """Create ``repo_id`` if needed and upload ``folder``; return the repository's URL."""
    if not os.path.isdir(folder) or not os.listdir(folder):
        raise ModelError(f'--push_to_hub: {folder} is empty or missing: nothing to upload')
    if use_hf:
        return _push_hf(folder, repo_id, token, private, commit_message)
    return _push_modelscope(folder, repo_id, token, private, commit_message)


def _push_hf(folder, repo_id, token, private, commit_message) -> str:
    if _offline('HF_HUB_OFFLINE'):
        raise ModelError(f'--push_to_hub: HF_HUB_OFFLINE=1 is set, so nothing can be uploaded to the Hugging Face Hub. '
                         f'Unset it on a machine with network access and run the export again, or upload {folder} '
                         f'later: `hf upload {repo_id} {folder}`')
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
        api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type='model', commit_message=commit_message,
                          ignore_patterns=['*.tmp', '*.tmp-*'])
    except OfflineModeIsEnabled:
        raise ModelError('--push_to_hub: huggingface_hub is in offline mode (HF_HUB_OFFLINE); unset it to upload') \
            from None
    except LocalTokenNotFoundError:
        raise ModelError('--push_to_hub: no Hugging Face token: log in with `hf auth login` or pass --hub_token') \
            from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, 'response', None), 'status_code', None)
        if status in (401, 403):
            raise ModelError(f'--push_to_hub: the Hugging Face Hub refused {repo_id} (HTTP {status}): log in with '
                             '`hf auth login` or pass --hub_token with write access') from None
        raise ModelError(f'--push_to_hub: uploading to {repo_id} failed: {e}') from None
    except (OSError, ValueError) as e:  # connection errors are OSErrors; bad ids ValueErrors
        raise ModelError(f'--push_to_hub: uploading to the Hugging Face Hub failed ({type(e).__name__}: {e}); check '
                         f'the network and the id {repo_id!r}') from None
    log(f'pushed {folder} to {url}')
    return str(url)


def _push_modelscope(folder, repo_id, token, private, commit_message) -> str:
    try:
        from modelscope.hub.api import HubApi
    except ImportError:
        raise ModelError('--push_to_hub: modelscope is not installed (pip install modelscope), or add --use_hf to '
                         'push to the Hugging Face Hub') from None
    api = HubApi()
    try:
        if token:
            api.login(token)
        api.push_model(model_id=repo_id, model_dir=folder, visibility=1 if private else 5,
                       commit_message=commit_message)
    except Exception as e:  # noqa: BLE001 - modelscope raises assorted types (requests, its own, ValueError)
        text = str(e)
        hint = ('log in with `modelscope login --token TOKEN` or pass --hub_token' if 'login' in text.lower() or
                '401' in text else 'check the network and the id, or add --use_hf for the Hugging Face Hub')
        raise ModelError(f'--push_to_hub: uploading to ModelScope {repo_id} failed ({type(e).__name__}: '
                         f'{text[:300]}); {hint}') from None
    url = f'https://modelscope.cn/models/{repo_id}'
    log(f'pushed {folder} to {url}')
    return url
