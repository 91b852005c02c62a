"""Bad data and template inputs (the audit's data items): `data check` flags, --val_dataset with nothing usable,
--template files that are missing, empty or not Jinja, and kto on rows with one answer. Each gets one clear line
naming the flag, file (and line) or row, exit code 2, no traceback, and fails before any training."""
import pytest

from tests.conftest import chat_rows, write_jsonl
from tests.conftest import cli_error as check_error
from tests.conftest import run_cli as lmforge


def check(model, dataset, *extra):
    return ['data', 'check', '--model', model, '--dataset', dataset, *extra]


def sft(model, dataset, out, *extra):
    return ['sft', '--model', model, '--dataset', dataset, '--report_to', 'none', '--output_dir', out, *extra]


# ------------------------------------------------------------------ 1. `data check` flags

@pytest.mark.parametrize('extra, phrases', [
    (['--columns', '{x'], ['--columns: expected a JSON object', "'{x'"]),
    (['--columns', '[1]'], ['--columns: expected a JSON object', "'[1]'"]),
    (['--columns', '{"messages": 5}'], ['--columns:', "'messages': 5"]),
    (['--dataset_num_proc', '0'], ['--dataset_num_proc: must be positive, got 0']),
    (['--dataset_num_proc', '-2'], ['--dataset_num_proc: must be positive, got -2']),
    (['--max_shown', '-1'], ['--max_shown: must be >= 0']),
])
def test_data_check_flag_values(capsys, tmp_path, extra, phrases):
    # the model does not exist: the flags are checked before it loads
    check_error(capsys, check(tmp_path / 'no_model', tmp_path / 'no.jsonl', *extra), *phrases)


def test_data_check_columns_that_are_fine(capsys, qwen2_dir, chat_file):
    code, out = lmforge(capsys, *check(qwen2_dir, chat_file, '--columns', '{"conversation": "messages"}'))
    assert code == 0, out
    assert 'invalid rows: 0' in out


# ------------------------------------------------------------------ 2. --val_dataset with no usable rows

def test_val_dataset_empty_file(capsys, tmp_path, qwen2_dir, chat_file):
    empty = tmp_path / 'empty.jsonl'
    empty.write_text('')
    err = check_error(capsys, sft(qwen2_dir, chat_file, tmp_path / 'out', '--val_dataset', empty),
                      f'--val_dataset {empty}: no rows')
    assert '--dataset ' not in err.splitlines()[-1], err


def test_val_dataset_all_rows_invalid(capsys, tmp_path, qwen2_dir, chat_file):
    bad = write_jsonl(tmp_path / 'bad_val.jsonl', [{'foo': 1}, {'foo': 2}])
    check_error(capsys, sft(qwen2_dir, chat_file, tmp_path / 'out', '--val_dataset', bad),
                f'--val_dataset: no usable validation samples in {bad}', '2 rows: 2 invalid', f'{bad}:1:')
    assert not (tmp_path / 'out').exists() or not any((tmp_path / 'out').rglob('*.safetensors'))


def test_val_dataset_missing_file_names_its_flag(capsys, tmp_path, qwen2_dir, chat_file):
    check_error(capsys, sft(qwen2_dir, chat_file, tmp_path / 'out', '--val_dataset', tmp_path / 'nope.jsonl'),
                f'--val_dataset {tmp_path / "nope.jsonl"}: file not found')


def test_val_dataset_with_streaming(capsys, tmp_path, qwen2_dir, chat_file):
    bad = write_jsonl(tmp_path / 'bad_val.jsonl', [{'foo': 1}])
    check_error(capsys, sft(qwen2_dir, chat_file, tmp_path / 'out', '--streaming', 'true', '--max_steps', '1',
                            '--val_dataset', bad), '--val_dataset: no usable validation samples')


@pytest.mark.parametrize('streaming', [False, True])
def test_rlhf_val_dataset_is_checked_like_sft(capsys, tmp_path, qwen2_dir, streaming):
    from tests.rlhf.helpers import letter_pairs

    pairs = write_jsonl(tmp_path / 'pairs.jsonl', letter_pairs(8, seed=1))
    stream = ['--streaming', 'true', '--max_steps', '1'] if streaming else []
    rlhf = ['rlhf', '--rlhf_type', 'dpo', '--model', qwen2_dir, '--dataset', pairs, '--report_to', 'none', *stream]
    empty = tmp_path / 'empty.jsonl'
    empty.write_text('')
    err = check_error(capsys, rlhf + ['--output_dir', tmp_path / 'a', '--val_dataset', empty],
                      f'--val_dataset {empty}: no rows')
    assert '--dataset ' not in err.splitlines()[-1], err
    bad = write_jsonl(tmp_path / 'bad_val.jsonl', [{'prompt': 'p'}, {'foo': 2}])
    check_error(capsys, rlhf + ['--output_dir', tmp_path / 'b', '--val_dataset', bad],
                f'--val_dataset: no usable validation samples in {bad}', '2 rows: 2 invalid')


def test_val_dataset_functions_name_the_flag(tmp_path):
    from lmforge.data.dataset import load_rows
    from lmforge.errors import DataError

    empty = tmp_path / 'empty.jsonl'
    empty.write_text('')
    with pytest.raises(DataError, match='^--val_dataset .*empty.jsonl: no rows'):
        load_rows([str(empty)], seed=0, flag='val_dataset')
    with pytest.raises(DataError, match='^--dataset .*empty.jsonl: no rows'):
        load_rows([str(empty)], seed=0)


# ------------------------------------------------------------------ 3. --template files

SYNTAX_ERROR = """{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' }}
{{- message['content'] + '<|im_end|>\\n' }
{%- endfor %}
"""


def test_template_file_not_found(capsys, tmp_path, qwen2_dir, chat_file):
    missing = tmp_path / 'missing.jinja'
    err = check_error(capsys, check(qwen2_dir, chat_file, '--template', missing),
                      f'--template {missing}: file not found')
    assert 'unknown template' not in err, err


def test_template_file_with_a_syntax_error(capsys, tmp_path, qwen2_dir, chat_file):
    path = tmp_path / 'broken.jinja'
    path.write_text(SYNTAX_ERROR)
    err = check_error(capsys, check(qwen2_dir, chat_file, '--template', path),
                      f'--template {path}: Jinja syntax error on line 3')
    assert 'rejected a conversation' not in err and err.count('\n') <= 2, err
    # training stops at the same place, before any row is encoded
    err = check_error(capsys, sft(qwen2_dir, chat_file, tmp_path / 'out', '--template', path),
                      f'--template {path}: Jinja syntax error on line 3')
    assert 'train data' not in err, err


@pytest.mark.parametrize('text', ['', '  \n\n'])
def test_template_file_empty(capsys, tmp_path, qwen2_dir, chat_file, text):
    path = tmp_path / 'empty.jinja'
    path.write_text(text)
    check_error(capsys, check(qwen2_dir, chat_file, '--template', path), f'--template {path}:', 'is empty')


def test_template_directory(capsys, tmp_path, qwen2_dir, chat_file):
    check_error(capsys, check(qwen2_dir, chat_file, '--template', tmp_path), f'--template {tmp_path}: is a directory')


def test_template_file_that_fails_on_rows_names_the_file(capsys, tmp_path, qwen2_dir, chat_file):
    """A template that parses but fails while rendering: each row's error names the --template file."""
    path = tmp_path / 'raises.jinja'
    path.write_text("{{ raise_exception('no chat here') }}")
    code, out = lmforge(capsys, *check(qwen2_dir, chat_file, '--template', path))
    assert code == 1, out
    assert f'(--template {path})' in out and 'no chat here' in out, out


def test_template_registry_names_still_work(capsys, qwen2_dir, chat_file):
    code, out = lmforge(capsys, *check(qwen2_dir, chat_file, '--template', 'chatml'))
    assert code == 0, out
    check_error(capsys, check(qwen2_dir, chat_file, '--template', 'chatmll'), "unknown template 'chatmll'",
                "Did you mean 'chatml'")


# ------------------------------------------------------------------ 4. kto on rows with one answer

def test_kto_rows_need_a_label_or_a_rejected_answer(capsys, tmp_path, qwen2_dir):
    data = write_jsonl(tmp_path / 'chat.jsonl', chat_rows(4))
    check_error(capsys, ['rlhf', '--rlhf_type', 'kto', '--model', qwen2_dir, '--dataset', data,
                         '--report_to', 'none', '--output_dir', tmp_path / 'out'],
                '--dataset: no usable kto rows', f'{data}:1: rejected: missing', '"label" column (true/false',
                'or a rejected answer')


def test_kto_message_for_rows_only():
    from lmforge.data.formats import RowError
    from lmforge.data.preference import normalize_kto, normalize_pair

    row = chat_rows(1)[0]
    with pytest.raises(RowError, match='label') as e:
        normalize_kto(row)
    assert e.value.field == 'rejected' and 'rejected_response' in e.value.problem
    assert normalize_kto(row | {'label': True})[0]['label'] is True
    with pytest.raises(RowError) as e:  # pairwise methods still ask for the rejected answer only
        normalize_pair(row)
    assert 'label' not in e.value.problem
