"""A shortened `lmforge demo` end to end: build, ask, fine-tune, ask again, answer through the server."""
import os

from lmforge import demo


def test_demo_learns_and_answers_through_the_server(tmp_path):
    result = demo(output_dir=str(tmp_path / 'demo'), max_steps=500, num_eval=40)  # ~55% after; 800 (default): ~90%
    assert result['accuracy_before'] <= 0.1  # a random model cannot answer
    assert result['accuracy_after'] >= result['accuracy_before'] + 0.3, result
    assert isinstance(result['server_answer'], str) and result['server_answer']
    assert os.path.isfile(os.path.join(result['checkpoint'], 'chat_template.jinja'))
    assert os.path.isfile(tmp_path / 'demo' / 'sft' / 'loss.png')
