"""`lmforge download`: fill the local hub cache (ModelScope, or Hugging Face with --use_hf)."""
from __future__ import annotations

from lmforge.args import DownloadArgs, from_kwargs


def download(config: str | None = None, **kwargs) -> str:
    """Python SDK: ``download(model='Qwen/Qwen2.5-0.5B-Instruct', use_hf=True)`` -> local path."""
    return run_download(from_kwargs(DownloadArgs, config, **kwargs))


def run_download(args: DownloadArgs) -> str:
    from lmforge.hub import download as fetch

    path = fetch(args.model, use_hf=args.use_hf, revision=args.model_revision, token=args.hub_token,
                 local_dir=args.local_dir)
    print(f'[lmforge] {args.model} -> {path}', flush=True)
    return path
