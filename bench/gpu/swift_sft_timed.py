# From ../shared/bench/gpu/swift_sft_timed.py (the GPU benchmark recipe shared with lmforge), unchanged.
"""Run `swift sft` in-process with bench_callback.ThroughputCallback attached to its trainer.

    python swift_sft_timed.py LABEL [swift sft arguments...]

ms-swift's trainers subclass transformers.Trainer, so wrapping Trainer.__init__ adds the same
callback the HF baseline uses, without touching ms-swift's code. BENCH_WARMUP (default 5) sets the
steps left out of the timing.
"""
import functools
import os
import sys

import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_callback import ThroughputCallback  # noqa: E402


def main():
    label, swift_args = sys.argv[1], sys.argv[2:]
    init = transformers.Trainer.__init__

    @functools.wraps(init)  # ms-swift reads Trainer.__init__'s signature (processing_class vs tokenizer)
    def init_with_callback(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(ThroughputCallback(label, warmup=int(os.environ.get('BENCH_WARMUP', '5')), extra={
            'framework': 'ms-swift', 'swift_args': ' '.join(swift_args)}))

    transformers.Trainer.__init__ = init_with_callback
    from swift.pipelines import sft_main
    sft_main(swift_args)


if __name__ == '__main__':
    main()
