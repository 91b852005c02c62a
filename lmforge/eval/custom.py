"""Custom evaluation sets in .jsonl: multiple choice (-> accuracy) and open QA (-> exact match, BLEU, ROUGE-L).

Multiple choice rows: {"question": ..., "choices": ["...", "..."] (or {"A": ..., "B": ...}, or columns A, B, C, ...),
"answer": "B" | 1 (0-based index) | the text of the right choice}. The model is asked through its chat template to
answer with the letter (`mc_prompt`); the first option letter in the answer (`extract_choice`) is compared with the
right one.

Open QA rows: {"question" | "query" | "prompt" | "input": ..., "answer" | "response" | "reference" | "output": ...},
optionally "system"; or {"messages": [...]} whose last assistant message is the reference.
"""
from __future__ import annotations

import json
import os
import re
import string
from dataclasses import dataclass, field

from lmforge.errors import DataError

LETTERS = string.ascii_uppercase
QUESTION_KEYS = ('question', 'query', 'prompt', 'input', 'instruction')
ANSWER_KEYS = ('answer', 'response', 'reference', 'output', 'target')
MC_INSTRUCTION = 'Answer with the letter of the correct option.'


@dataclass
class Item:
    where: str  # file:line
    messages: list  # the conversation to answer
    reference: str  # MC: the right letter; QA: the reference answer
    choices: list = field(default_factory=list)  # MC only


def mc_prompt(question: str, choices: list[str]) -> str:
    """The user message of a multiple-choice question."""
    options = '\n'.join(f'{LETTERS[i]}. {c}' for i, c in enumerate(choices))
    return f'{question.strip()}\n\n{options}\n\n{MC_INSTRUCTION}'


def extract_choice(text: str, n_choices: int) -> str | None:
    """The option letter an answer gives: a leading letter ("B", "B.", "(B) ...", "B) ..."; not the article in "A
    good ..."), else "answer is B" / "answer: B", else the only option letter standing alone in the text."""
    letters = LETTERS[:n_choices]
    text = (text or '').strip()
    m = re.match(rf'^[\(\[]?([{letters}])(?:[\)\]\.:：、,，\n]|$)', text)  # not "A good ..."
    if m:
        return m.group(1)
    m = re.search(rf'(?:answer|Answer|ANSWER|答案|选)\s*(?:is|是|为|:|：)?\s*[\(\[]?([{letters}])\b', text)
    if m:
        return m.group(1)
    alone = set(re.findall(rf'(?<![A-Za-z])([{letters}])(?![A-Za-z])', text))
    return alone.pop() if len(alone) == 1 else None


def _first(row: dict, keys) -> tuple[str | None, object]:
    for k in keys:
        if k in row and row[k] is not None:
            return k, row[k]
    return None, None


def _choices(row: dict, where: str) -> list[str] | None:
    if 'choices' in row or 'options' in row:
        raw = row.get('choices', row.get('options'))
        if isinstance(raw, dict):
            keys = sorted(raw)
            if keys != list(LETTERS[:len(keys)]):
                raise DataError(f'{where}: choices: a mapping must have the keys A, B, C, ... (got {keys})')
            raw = [raw[k] for k in keys]
        if not isinstance(raw, list) or len(raw) < 2 or not all(isinstance(c, (str, int, float)) for c in raw):
            raise DataError(f'{where}: choices: expected a list of at least two strings')
        if len(raw) > len(LETTERS):
            raise DataError(f'{where}: choices: at most {len(LETTERS)} options')
        return [str(c) for c in raw]
    if 'A' in row and 'B' in row:  # EvalScope's general_mcq columns
        out = []
        for letter in LETTERS:
            if letter not in row:
                break
            out.append(str(row[letter]))
        return out
    return None


def _answer_letter(answer, choices: list[str], where: str) -> str:
    if isinstance(answer, bool):
        raise DataError(f'{where}: answer: expected a letter, an index or the right choice\'s text, got {answer!r}')
    if isinstance(answer, int):
        if not 0 <= answer < len(choices):
            raise DataError(f'{where}: answer: index {answer} is outside the {len(choices)} choices (0-based)')
        return LETTERS[answer]
    if isinstance(answer, str):
        a = answer.strip()
        if len(a) == 1 and a.upper() in LETTERS[:len(choices)]:
            return a.upper()
        if a in choices:
            return LETTERS[choices.index(a)]
    last = LETTERS[len(choices) - 1]
    raise DataError(f'{where}: answer: {answer!r} is neither an option letter (A-{last}), '
                    'a 0-based index, nor the text of one of the choices')


def parse_row(row: dict, where: str) -> tuple[str, Item]:
    """('mc' | 'qa', Item) for one row."""
    if not isinstance(row, dict):
        raise DataError(f'{where}: expected a JSON object')
    system = row.get('system')
    prefix = [{'role': 'system', 'content': system}] if isinstance(system, str) and system else []
    choices = _choices(row, where)
    if choices is not None:
        _, question = _first(row, QUESTION_KEYS)
        if not isinstance(question, str) or not question.strip():
            raise DataError(f'{where}: a multiple-choice row needs a "question" string')
        key, answer = _first(row, ANSWER_KEYS)
        if key is None:
            raise DataError(f'{where}: a multiple-choice row needs an "answer" (letter, 0-based index or text)')
        letter = _answer_letter(answer, choices, where)
        return 'mc', Item(where, prefix + [{'role': 'user', 'content': mc_prompt(question, choices)}], letter, choices)
    if isinstance(row.get('messages'), list):
        from lmforge.data.formats import RowError, normalize

        try:
            messages = normalize(row, 'sft')['messages']
        except RowError as e:
            raise DataError(f'{where}: {e.field}: {e.problem}') from None
        if messages[-1]['role'] != 'assistant':
            raise DataError(f'{where}: messages: the last message must be the assistant\'s reference answer')
        return 'qa', Item(where, messages[:-1], str(messages[-1]['content']))
    qkey, question = _first(row, QUESTION_KEYS)
    akey, answer = _first(row, ANSWER_KEYS)
    if not isinstance(question, str) or akey is None:
        raise DataError(f'{where}: expected a multiple-choice row (question, choices, answer) or an open-QA row '
                        f'(question/query, answer/response) or messages; got the keys {sorted(row)}')
    return 'qa', Item(where, prefix + [{'role': 'user', 'content': question}], str(answer))


def load_custom(path: str, limit: int | None = None) -> tuple[str, list[Item]]:
    """Read a custom .jsonl set; every row must be of one kind (all multiple choice or all open QA)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise DataError(f'--eval_dataset {path}: no such file')
    kind, items = None, []
    with open(path, encoding='utf-8') as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f'{path}:{i}'
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f'{where}: not valid JSON ({e.msg})') from None
            row_kind, item = parse_row(row, where)
            if kind is None:
                kind = row_kind
            elif row_kind != kind:
                raise DataError(f'{where}: a {"multiple-choice" if row_kind == "mc" else "open-QA"} row in a '
                                f'{"multiple-choice" if kind == "mc" else "open-QA"} file: use one file per kind')
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
    if not items:
        raise DataError(f'--eval_dataset {path}: no rows')
    return kind, items


def score_mc(items: list[Item], responses: list[str]) -> tuple[dict, list[dict]]:
    rows, correct = [], 0
    for item, response in zip(items, responses):
        picked = extract_choice(response, len(item.choices))
        ok = picked == item.reference
        correct += ok
        rows.append({'where': item.where, 'prompt': item.messages[-1]['content'], 'response': response,
                     'picked': picked, 'answer': item.reference, 'correct': ok})
    n = len(items)
    unparsed = sum(r['picked'] is None for r in rows)
    return {'accuracy': correct / n, 'unanswered': unparsed / n}, rows


def score_answers(responses: list[str], references: list[str]) -> tuple[dict, list[dict]]:
    """The open-QA metrics of answers against their references: ``({exact_match, bleu, rouge_l}, [per answer])``.
    Exact match and ROUGE-L are means over the answers (0-1), BLEU is corpus BLEU (0-100). Also what
    ``--predict_with_generate`` logs during training (lmforge.train.generate_eval)."""
    from lmforge.eval import metrics

    if not responses:
        raise ValueError('no answers to score')
    scores = [{'exact_match': metrics.exact_match(response, reference),
               'bleu': metrics.sentence_bleu(response, reference),
               'rouge_l': metrics.rouge_l(response, reference)} for response, reference in zip(responses, references)]
    n = len(scores)
    return {'exact_match': sum(s['exact_match'] for s in scores) / n,
            'bleu': metrics.bleu(responses, references),
            'rouge_l': sum(s['rouge_l'] for s in scores) / n}, scores


def score_qa(items: list[Item], responses: list[str]) -> tuple[dict, list[dict]]:
    summary, scores = score_answers(responses, [i.reference for i in items])
    rows = [{'where': item.where, 'prompt': item.messages[-1]['content'], 'response': response,
             'reference': item.reference, **score} for item, response, score in zip(items, responses, scores)]
    return summary, rows
