"""The results table on the console and the JSON report."""
from __future__ import annotations

import json
import os

PERCENT = ('acc', 'acc_norm', 'accuracy', 'exact_match', 'rouge_l', 'unanswered', 'mc1', 'mc2', 'f1', 'em')


def format_value(metric: str, value: float) -> str:
    base = metric.split(' ')[0]
    if base in PERCENT or (base.endswith(('acc', 'match')) and 0 <= value <= 1):
        return f'{100 * value:.2f}%'
    return f'{value:.4g}'


def table(results: dict[str, dict], n_samples: dict[str, int], backends: dict[str, str]) -> str:
    """| dataset | backend | metric | value | rows |"""
    rows = [('dataset', 'backend', 'metric', 'value', 'rows')]
    for name, metrics in results.items():
        for metric, value in metrics.items():
            rows.append((name, backends.get(name, ''), metric, format_value(metric, value),
                         str(n_samples.get(name, ''))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    line = '+' + '+'.join('-' * (w + 2) for w in widths) + '+'
    out = [line]
    for i, r in enumerate(rows):
        out.append('| ' + ' | '.join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
                   + ' |')
        if i == 0:
            out.append(line)
    out.append(line)
    return '\n'.join(out)


def write_report(path: str, report: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2, ensure_ascii=False, default=str)
    os.replace(path + '.tmp', path)
    return path


def write_rows(path: str, rows: list[dict]) -> str:
    with open(path, 'w', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + '\n')
    return path
