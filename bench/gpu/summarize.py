# From ../shared/bench/gpu/summarize.py (the GPU benchmark recipe shared with lmforge); lmforge added the
# comparison with ms-swift (issue 6 targets) after the table.
"""Turn the BENCH_RESULT lines of a run into a markdown table with MFU.

    python summarize.py RESULTS_JSONL MODEL_INFO_JSON MATMUL_JSON

MODEL_INFO_JSON is the line make_model_and_data.py prints; MATMUL_JSON is the line matmul_peak.py
prints. FLOPs per trained token (model FLOPs: gradient-checkpointing recompute is not counted, nor
is work a framework skips, such as ms-swift's logits_to_keep):
  6N            = 6 * N                                   (the usual full fine-tuning convention)
  LoRA          = 4 * N + 6 * N_lora + 12 * L * d * s     (frozen base: forward 2N + activation
                  gradients 2N, no weight gradients; LoRA adapters trained in full; attention score
                  and value matmuls forward + backward at mean row length s)
with N = parameters that take part in matmuls (tied embedding counted once, as the LM head).
MFU = tokens/s * FLOPs per token / peak, for peak = 989 TFLOP/s (H100 SXM dense bf16) and for the
measured 8192^3 bf16 matmul rate.

After the table: every lmforge row against the ms-swift row with the same gradient checkpointing (median of its
repeats): tokens/s ratio (target >= 1.5) and peak allocated memory ratio (target <= 0.7).
"""
import json
import statistics
import sys

H100_PEAK = 989e12


def main():
    results_path, model_path, matmul_path = sys.argv[1:4]
    with open(model_path) as f:
        info = json.loads(f.read().strip().splitlines()[-1])
    with open(matmul_path) as f:
        matmul = json.loads(f.read().strip().splitlines()[-1])
    with open(results_path) as f:
        results = [json.loads(line) for line in f if line.strip()]
    n, s = info['params'], info['row_tokens_mean']
    layers, d = info['num_hidden_layers'], info['hidden_size']
    measured_peak = (matmul.get('tflops') or float('nan')) * 1e12
    print(f"N = {n:,} params; L = {layers}, d = {d}, mean row length s = {s:.1f}; "
          f"measured bf16 matmul peak {measured_peak / 1e12:.1f} TFLOP/s")
    print()
    print('| config | tokens/s | peak mem GiB (alloc / reserved) | step s (median) | MFU 6N vs 989 | '
          'MFU LoRA vs 989 | MFU LoRA vs measured |')
    print('| --- | ---: | ---: | ---: | ---: | ---: | ---: |')
    for r in results:
        n_lora = r.get('trainable_params', info.get('lora_params', 0))
        f6 = 6 * n
        flora = 4 * n + 6 * n_lora + 12 * layers * d * s
        tps = r['tokens_per_s']
        print(f"| {r['label']} | {tps:,.0f} | {r.get('peak_mem_allocated_gib', 'n/a')} / "
              f"{r.get('peak_mem_reserved_gib', 'n/a')} | {r['median_step_s']} | {tps * f6 / H100_PEAK:.1%} | "
              f"{tps * flora / H100_PEAK:.1%} | {tps * flora / measured_peak:.1%} |")
    compare_with_swift(results)


def compare_with_swift(results, speed_target=1.5, memory_target=0.7):
    def gc_of(r):
        return 'on' if 'gc=on' in r['label'] else 'off'

    def median(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    swift = {}
    for gc in ('off', 'on'):  # the plain ms-swift rows (not the logits_to_keep=off extra)
        rows = [r for r in results if r.get('framework') == 'ms-swift' and gc_of(r) == gc
                and r['label'].split(' bs=')[-1].isdigit()]
        if rows:
            swift[gc] = (median([r['tokens_per_s'] for r in rows]),
                         median([r.get('peak_mem_allocated_gib') for r in rows]), len(rows))
    lmforge = [r for r in results if r.get('framework') == 'lmforge' and gc_of(r) in swift]
    if not lmforge:
        return
    print()
    print(f'| lmforge config | tokens/s / ms-swift (target >= {speed_target}) | '
          f'peak alloc / ms-swift (target <= {memory_target}) | both met |')
    print('| --- | ---: | ---: | --- |')
    for r in lmforge:
        tps, mem, n = swift[gc_of(r)]
        speed = r['tokens_per_s'] / tps
        ratio = r['peak_mem_allocated_gib'] / mem if mem and r.get('peak_mem_allocated_gib') else None
        met = speed >= speed_target and ratio is not None and ratio <= memory_target
        print(f"| {r['label']} | {speed:.2f} (ms-swift median of {n}: {tps:,.0f}) | "
              f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {'yes' if met else 'no'} |")


if __name__ == '__main__':
    main()
