"""Which chat templates print message contents verbatim: proven once per template from its Jinja syntax tree.

`lmforge.templates.encode` renders each conversation *shape* (the roles, loss flags and template options of plain
``{role, content}`` string messages) once with placeholder contents, and builds each conversation's text by putting
its contents into that skeleton. Without a proof it renders every conversation once more to check the result. This
module gives the proof that makes that check redundant for a template: `prints_contents_verbatim` is True only when

* nothing the template decides on (``if``/``elif`` tests, ``for`` iterables and filters, call and filter arguments,
  comparisons, indexes, ``set`` values other than text) depends on a message's content: only on the roles, the
  number of messages, loop positions, message keys other than ``content`` (absent in such conversations: the same
  for every conversation of a shape), the template options and the special tokens; content may only be tested for
  its type (always a string here);
* a content reaches the output only as itself or joined with ``+``/``~`` to such shape-determined text.

Then every conversation of a shape takes the same path through the template, and its text is the skeleton's with
the contents put in. The analysis is conservative: anything it does not know (macros, includes, filters applied to
content, ``content.strip()``, iterating a message, ``tojson`` of messages, the clock through ``strftime_now``, ...)
makes the template unproven, and such templates keep the checking render. `tests/data/test_pipeline.py` compares
the result with rendering every turn on every fixture template.
"""
from __future__ import annotations

import functools

S, C, M, L = 'shape', 'content', 'message', 'messages'  # value kinds: shape-determined, content text, a message,
LOOP_M, LOOP_S = 'loop over messages', 'loop'            # a list of messages, the `loop` of a for over each


class _Unproven(Exception):
    pass


# Globals a template may call: deterministic, and their result shape-determined when their arguments are.
SAFE_CALLS = ('raise_exception', 'namespace', 'range', 'dict', 'lipsum', 'cycler', 'joiner')
# Tests that look at a value's type only: a content is always a string here.
TYPE_TESTS = ('defined', 'undefined', 'string', 'none', 'mapping', 'sequence', 'iterable', 'number', 'boolean',
              'false', 'true', 'integer', 'float', 'callable')
# Filters that are functions of their input (and arguments) alone.
IMPURE_FILTERS = ('random',)


@functools.lru_cache(maxsize=64)
def prints_contents_verbatim(source: str) -> bool:
    """True when the chat template ``source`` is proven to print contents verbatim (see the module doc)."""
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
        tree = _compile_jinja_template(source).environment.parse(source)
        _Analysis().block(tree.body, {})
    except _Unproven:
        return False
    except Exception:  # noqa: BLE001 - a template (or transformers version) this module does not know: no proof
        return False
    return True


def _fail(why: str):
    raise _Unproven(why)


class _Analysis:
    # ---------------------------------------------------------------- statements
    def block(self, body: list, env: dict) -> dict:
        for node in body:
            env = self.stmt(node, env)
        return env

    def stmt(self, node, env: dict) -> dict:
        from jinja2 import nodes as n

        if isinstance(node, n.Output):
            for part in node.nodes:
                if not isinstance(part, n.TemplateData) and self.expr(part, env) not in (S, C):
                    _fail('a message or the message list is printed')
            return env
        if isinstance(node, n.If):
            self.need_shape(node.test, env)
            branches = [self.block(node.body, dict(env))]
            branches += [self.stmt(e, dict(env)) for e in node.elif_]
            branches.append(self.block(node.else_, dict(env)))
            return _merge(env, branches)
        if isinstance(node, n.For):
            return self.for_loop(node, env)
        if isinstance(node, n.Assign):
            return self.assign(node.target, self.expr(node.node, env), env)
        if isinstance(node, n.AssignBlock):  # {% set x %}...{% endset %}: x is text, maybe with content in it
            if node.filter is not None:
                _fail('a filtered set block')
            self.block(node.body, dict(env))
            return self.assign(node.target, C, env)
        if isinstance(node, (n.Continue, n.Break)):
            return env
        if isinstance(node, n.CallBlock) and _is_generation_block(node):
            self.block(node.body, dict(env))
            return env
        _fail(f'{type(node).__name__} statements are not analysed')

    def for_loop(self, node, env: dict) -> dict:
        from jinja2 import nodes as n

        if node.recursive:
            _fail('recursive loop')
        kind = self.expr(node.iter, env)
        inner = dict(env)
        if kind == L:
            if not isinstance(node.target, n.Name):
                _fail('unpacking messages')
            inner[node.target.name] = M
            inner['loop'] = LOOP_M
        elif kind == S:
            for name in _target_names(node.target):
                inner[name] = S
            inner['loop'] = LOOP_S
        else:
            _fail(f'iterating over {kind}')
        if node.test is not None:
            self.need_shape(node.test, inner)
        self.block(node.body, dict(inner))
        self.block(node.else_, dict(env))
        return env  # assignments in a loop body stay in it (Jinja scoping); namespaces only take shape values

    def assign(self, target, kind: str, env: dict) -> dict:
        from jinja2 import nodes as n

        env = dict(env)
        if isinstance(target, n.NSRef):
            if kind != S:
                _fail('a namespace attribute set from content or messages')
            return env
        names = _target_names(target)
        if not isinstance(target, n.Name) and kind != S:
            _fail('unpacking content or messages')
        for name in names:
            env[name] = kind
        return env

    # ---------------------------------------------------------------- expressions
    def need_shape(self, node, env: dict) -> None:
        if self.expr(node, env) != S:
            _fail('a decision depends on content or messages')

    def expr(self, node, env: dict) -> str:  # noqa: C901 - one case per node type
        from jinja2 import nodes as n

        if isinstance(node, (n.Const, n.TemplateData)):
            return S
        if isinstance(node, n.Name):
            kind = env.get(node.name, L if node.name == 'messages' else S)
            if kind is None:
                _fail(f'{node.name} is bound differently on different paths')
            return kind
        if isinstance(node, n.Getattr):
            return self.member(self.expr(node.node, env), node.attr)
        if isinstance(node, n.Getitem):
            base = self.expr(node.node, env)
            if isinstance(node.arg, n.Slice):
                for part in (node.arg.start, node.arg.stop, node.arg.step):
                    if part is not None:
                        self.need_shape(part, env)
                if base in (S, L):
                    return base
                _fail(f'slicing {base}')
            if base == M:
                if not isinstance(node.arg, n.Const) or not isinstance(node.arg.value, str):
                    _fail('a message indexed by a computed key')
                return self.member(M, node.arg.value)
            self.need_shape(node.arg, env)
            if base == L:
                return M
            if base == S:
                return S
            _fail(f'indexing {base}')
        if isinstance(node, n.Add):
            return _join(self.expr(node.left, env), self.expr(node.right, env))
        if isinstance(node, n.Concat):
            kind = S
            for part in node.nodes:
                kind = _join(kind, self.expr(part, env))
            return kind
        if isinstance(node, (n.BinExpr, n.UnaryExpr)):  # arithmetic, and/or, not, -x: on shape values only
            for part in ((node.left, node.right) if isinstance(node, n.BinExpr) else (node.node,)):
                self.need_shape(part, env)
            return S
        if isinstance(node, n.Compare):
            self.need_shape(node.expr, env)
            for op in node.ops:
                self.need_shape(op.expr, env)
            return S
        if isinstance(node, n.CondExpr):
            self.need_shape(node.test, env)
            a = self.expr(node.expr1, env)
            b = self.expr(node.expr2, env) if node.expr2 is not None else S
            if a == b:
                return a
            if {a, b} <= {S, C}:
                return C
            _fail('a conditional mixes messages with text')
        if isinstance(node, (n.List, n.Tuple)):
            for item in node.items:
                self.need_shape(item, env)
            return S
        if isinstance(node, n.Dict):
            for pair in node.items:
                self.need_shape(pair.key, env)
                self.need_shape(pair.value, env)
            return S
        if isinstance(node, n.Test):
            self.arguments(node, env)
            kind = self.expr(node.node, env)
            if kind == S or node.name in TYPE_TESTS:
                return S
            _fail(f'content or messages tested with "{node.name}"')
        if isinstance(node, n.Filter):
            return self.filter(node, env)
        if isinstance(node, n.Call):
            return self.call(node, env)
        _fail(f'{type(node).__name__} expressions are not analysed')

    def member(self, base: str, name: str) -> str:
        """``base.name`` / ``base["name"]``."""
        if base == S:
            return S
        if base == M:
            if name == 'content':
                return C
            if hasattr(dict, name):
                _fail(f'message.{name}')
            return S  # the role, or a key these messages do not have
        if base == LOOP_M and name in ('previtem', 'nextitem'):
            return M
        if base in (LOOP_M, LOOP_S):
            return S
        if base == L and not hasattr(list, name):
            return S  # undefined
        _fail(f'{base}.{name}')

    def arguments(self, node, env: dict) -> None:
        for arg in node.args:
            self.need_shape(arg, env)
        for kw in node.kwargs:
            self.need_shape(kw.value, env)
        for dyn in (node.dyn_args, node.dyn_kwargs):
            if dyn is not None:
                self.need_shape(dyn, env)

    def filter(self, node, env: dict) -> str:
        self.arguments(node, env)
        if node.node is None:
            _fail('a filter block')
        kind = self.expr(node.node, env)
        if node.name in IMPURE_FILTERS:
            _fail(f'the {node.name} filter')
        if kind == S:
            return S
        if kind == L:
            if node.name in ('length', 'count'):
                return S
            if node.name in ('first', 'last'):
                return M
            if node.name in ('list', 'reverse'):
                return L
            if node.name in ('selectattr', 'rejectattr') and node.args and \
                    getattr(node.args[0], 'value', 'content') != 'content':
                return L
        _fail(f'the {node.name} filter applied to {kind}')

    def call(self, node, env: dict) -> str:
        from jinja2 import nodes as n

        self.arguments(node, env)
        func = node.node
        if isinstance(func, n.Name):
            if func.name in SAFE_CALLS and func.name not in env:
                return S
            _fail(f'a call of {func.name}')
        if isinstance(func, n.Getattr) and self.expr(func.node, env) in (S, LOOP_M, LOOP_S):
            return S  # a method of a shape value (str.strip, loop.cycle, ...) with shape arguments
        _fail('a call of a method of content or messages')


def _join(a: str, b: str) -> str:
    if a == S and b == S:
        return S
    if {a, b} <= {S, C}:
        return C
    _fail(f'{a} + {b}')


def _merge(before: dict, branches: list[dict]) -> dict:
    """A name bound to text on one path and content text on another is content text; one bound to different kinds
    of value (a message here, text there) becomes unusable (None)."""
    out = dict(before)
    for name in set().union(*branches):
        kinds = {b.get(name, before.get(name, S if name != 'messages' else L)) for b in branches}
        out[name] = kinds.pop() if len(kinds) == 1 else C if kinds <= {S, C} else None
    return out


def _target_names(target) -> list[str]:
    from jinja2 import nodes as n

    if isinstance(target, n.Name):
        return [target.name]
    if isinstance(target, n.Tuple):
        return [name for item in target.items for name in _target_names(item)]
    _fail(f'assignment to {type(target).__name__}')


def _is_generation_block(node) -> bool:
    """transformers' ``{% generation %}`` block: renders its body unchanged (marks assistant text when asked to)."""
    from jinja2 import nodes as n

    call = node.call
    return isinstance(call, n.Call) and isinstance(call.node, n.ExtensionAttribute) and \
        call.node.name == '_generation_support' and not node.args
