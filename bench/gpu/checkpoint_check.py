"""Does a training checkpoint reload? Loads it the way `lmforge infer --model CKPT` does (a full model dir, or a
LoRA checkpoint on its base) and compares it with the base model it was trained from.

    python bench/gpu/checkpoint_check.py CKPT BASE DATA_JSONL [--label LABEL]

Prints 'RELOAD_RESULT {json}' and, if BENCH_OUT is set, appends the JSON to that file: the parameter count of
both, how many tensors training changed (the LoRA checkpoint merged first), and the mean loss of the first rows of
DATA_JSONL under each. ok: same parameter names and shapes as the base, some tensor changed, finite losses.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def load(path: str):
    from lmforge.models import load_model, load_tokenizer, resolve_checkpoint

    bundle = resolve_checkpoint(path)
    model = load_model(bundle.base_dir, torch_dtype='bfloat16', adapters=bundle.adapters)
    if bundle.adapters:
        model = model.merge_and_unload()
    return model.eval(), load_tokenizer(bundle.tokenizer_dir), bundle


def mean_loss(model, tokenizer, rows) -> float:
    import torch

    losses = []
    for messages in rows:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors='pt')['input_ids'][:, :1024].to(model.device)
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=ids, use_cache=False).loss.float().item())
    return sum(losses) / len(losses)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('ckpt')
    p.add_argument('base')
    p.add_argument('data')
    p.add_argument('--label', default='')
    p.add_argument('--rows', type=int, default=4)
    a = p.parse_args()
    import torch

    with open(a.data) as f:
        rows = [json.loads(line)['messages'] for _, line in zip(range(a.rows), f)]
    trained, tokenizer, bundle = load(a.ckpt)
    base, _, _ = load(a.base)
    got, want = trained.state_dict(), base.state_dict()
    same_layout = got.keys() == want.keys() and all(got[k].shape == want[k].shape for k in want)
    changed = sum(not torch.equal(got[k].to(want[k].device), want[k]) for k in want if k in got)
    res = {'label': a.label, 'checkpoint': a.ckpt, 'files': sorted(os.listdir(a.ckpt)), 'lora': bool(bundle.adapters),
           'params': sum(t.numel() for t in got.values()), 'base_params': sum(t.numel() for t in want.values()),
           'same_layout': same_layout, 'tensors_changed': changed, 'tensors': len(want),
           'loss_checkpoint': round(mean_loss(trained, tokenizer, rows), 4),
           'loss_base': round(mean_loss(base, tokenizer, rows), 4)}
    res['ok'] = bool(same_layout and changed > 0 and math.isfinite(res['loss_checkpoint']))
    print('RELOAD_RESULT ' + json.dumps(res), flush=True)
    if os.environ.get('BENCH_OUT'):
        with open(os.environ['BENCH_OUT'], 'a') as f:
            f.write(json.dumps(res) + '\n')
    return 0 if res['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
