"""Chat formatting and loss masks derived from the model's own chat template."""
from lmforge.templates.encode import (IGNORE_INDEX, encode_chat, encode_chat_samples, end_of_turn_tokens,
                                      stop_token_ids, tokenize_spans, trained_turns)
from lmforge.templates.registry import apply_template, list_templates, with_system
from lmforge.templates.render import render, render_prompt
from lmforge.templates.tool_calls import parse_tool_calls

__all__ = ['IGNORE_INDEX', 'encode_chat', 'encode_chat_samples', 'end_of_turn_tokens', 'stop_token_ids',
           'tokenize_spans', 'trained_turns', 'apply_template', 'list_templates', 'with_system', 'render',
           'render_prompt', 'parse_tool_calls']
