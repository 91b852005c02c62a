"""The demo's synthetic tasks: short string and number tasks with one right answer each.

`python -m lmforge.demo.tasks` regenerates the bundled files (train.jsonl, test.jsonl) byte for byte.
Test rows use strings that never occur in the training rows, so a right answer on them shows generalisation,
not memory.
"""
from __future__ import annotations

import json
import os
import random
import string

HERE = os.path.dirname(os.path.abspath(__file__))


def _word(rng: random.Random) -> str:
    return ''.join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))


def make_task(rng: random.Random, word: str) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        return f'First letter: {word}', word[0]
    if kind == 1:
        return f'Last letter: {word}', word[-1]
    if kind == 2:
        n = rng.randrange(10, 1000)
        return f'Even or odd: {n}', 'even' if n % 2 == 0 else 'odd'
    a, b = rng.sample(range(10, 100), 2)
    return f'Larger: {a} or {b}?', str(max(a, b))


def make_rows(n_train: int = 3000, n_test: int = 200, seed: int = 0) -> tuple[list, list]:
    rng = random.Random(seed)
    words = set()
    while len(words) < n_train + n_test:
        words.add(_word(rng))
    words = sorted(words)
    rng.shuffle(words)
    test_words, train_words = words[:n_test], words[n_test:]

    def row(word):
        q, a = make_task(rng, word)
        return {'messages': [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]}

    return [row(w) for w in train_words], [row(w) for w in test_words]


def data_path(name: str) -> str:
    return os.path.join(HERE, name)


def main() -> None:
    train, test = make_rows()
    for name, rows in (('train.jsonl', train), ('test.jsonl', test)):
        with open(data_path(name), 'w', encoding='utf-8') as f:
            for r in rows:
                f.write(json.dumps(r) + '\n')
        print(f'wrote {len(rows)} rows to {data_path(name)}')


if __name__ == '__main__':
    main()
