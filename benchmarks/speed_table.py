"""The README's speed and size tables from a speed record folder (see speed_records.sh).

python benchmarks/speed_table.py records/<date>_speed               # the record's README.md
python benchmarks/speed_table.py records/<date>_speed --readme README.md
    # ... and the same tables into README.md between <!-- speed:start --> and <!-- speed:end -->
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text())


def train_step_lines(step: dict) -> list[str]:
    """The training-step sentence(s); records before the native GEMM have one kernel (torch)."""
    ms, ratio = step["median_step_ms"], step["ratio_bc_over_fp"]
    if not isinstance(ratio, dict):  # old format: {"fp": .., "bc": ..}, one ratio
        ms, ratio = {"fp/torch": ms["fp"], "bc/torch": ms["bc"]}, {"torch": ratio}
    head = (
        f"Training step, MLP 784-2048x3-10, batch 100, Adam, {step['threads']} threads "
        "(no torch.compile: the binarization writes into a preallocated buffer and the optimizer "
        "is torch's fused Adam):"
    )
    lines = [
        head,
        "",
        "| matrix products | float step | BinaryConnect step | ratio |",
        "|---|---|---|---|",
    ]
    names = {"torch": "torch (MKL)", "onebit": "onebit's native kernel (`train.gemm`, default)"}
    for k in ratio:
        lines.append(
            f"| {names.get(k, k)} | {ms[f'fp/{k}']:.1f} ms | {ms[f'bc/{k}']:.1f} ms | "
            f"**{ratio[k]:.2f}x** |"
        )
    for m, x in step.get("speedup_onebit_over_torch", {}).items():
        lines.append(f"\nThe native kernel makes the {m} step {x:.2f}x faster than torch's.")
    return lines


NAMES = {
    "torch_fp32": "torch fp32",
    "torch_bf16": "torch bf16",
    "ort_fp32": "ORT fp32",
    "ort_int8": "ORT int8",
}


def model_lines(m: dict) -> list[str]:
    """Per packed model, batch and threads: its time and baseline / packed for each baseline."""
    if not any("vs" in r for case in m["results"] for r in case["results"]):  # older records
        lines = [
            "| packed model | batch | threads | packed | torch fp32 | speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for case in m["results"]:
            for r in case["results"]:
                lines.append(
                    f"| {case['case']} | {r['batch']} | {r['threads']} | {r['packed_ms']:.3f} ms | "
                    f"{r['torch_fp32_ms']:.3f} ms | {r['speedup']:.1f}x |"
                )
        return lines
    base = [b for b in NAMES if any(b in r["vs"] for c in m["results"] for r in c["results"])]
    lines = [
        "Packed models against what a user would deploy instead, each ratio = baseline time / "
        "packed time in the same run (> 1: onebit is faster). *exact*: float activations (the "
        "default); *int8*: the opt-in 8-bit activations (binary-weight models only), with their "
        "agreement with the exact path on the timed batch. ORT = onnxruntime on the same graph "
        "(int8: `quantize_dynamic`).",
        "",
        "| packed model | batch | threads | path | packed | "
        + " | ".join(f"vs {NAMES[b]}" for b in base)
        + " | int8 agreement (argmax, max abs diff / max abs logit) |",
        "|---|---|---|---|---|" + "---|" * len(base) + "---|",
    ]
    for case in m["results"]:
        for r in case["results"]:
            cells = " | ".join(f"{r['vs'][b]:.2f}x" if b in r["vs"] else "-" for b in base)
            lines.append(
                f"| {case['case']} | {r['batch']} | {r['threads']} | exact | "
                f"{r['packed_ms']:.3f} ms | {cells} | |"
            )
            if "packed_int8_ms" in r:
                cells = " | ".join(
                    f"{r['vs_int8'][b]:.2f}x" if b in r["vs_int8"] else "-" for b in base
                )
                ag = r["int8_agreement"]
                lines.append(
                    f"| | | | int8 | {r['packed_int8_ms']:.3f} ms | {cells} | "
                    f"{ag['argmax']:.3f}, {ag['max_abs_diff_rel']:.2g} |"
                )
    return lines


def limit_lines(x: dict) -> list[str]:
    t = x["targets"]
    lines = [
        "XNOR GEMM with its weights laid out once, at load, against its limit kernel "
        "(`benchmarks/limit/xnor_limit.c`: the micro-kernel alone), both timed in C in the same "
        f"run: at most {t['within_10pct_of_limit']['value']:.2f}x the limit over every shape; "
        f"2 threads at least {t['2t_ge_1.8x_for_M_ge_16']['value']:.2f}x one thread for M >= 16 "
        f"and {t['2t_ge_1.5x_at_M1_K_N_ge_2048']['value']:.2f}x at M = 1 (K, N >= 2048).",
        "",
        "| M | K = N | 1 thread | / limit | 2 threads | / limit | 2-thread speed-up | "
        "per-call re-layout (before) / now |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in x["results"]:
        u = r["us"]
        lines.append(
            f"| {r['M']} | {r['K']} | {u['library_1t']:.1f} µs | {r['library_over_limit_1t']:.2f} | "
            f"{u['library_2t']:.1f} µs | {r['library_over_limit_2t']:.2f} | "
            f"{r['library_2t_speedup']:.2f}x | {r['relayout_over_library_1t']:.2f}x |"
        )
    return lines


START, END = "<!-- speed:start -->", "<!-- speed:end -->"


def into_readme(readme: Path, folder: Path, text: str) -> bool:
    """Replace the README's generated speed section with ``text`` (the record's tables, its title
    dropped); True when the file changed. The markers must be there already."""
    old = readme.read_text()
    if START not in old or END not in old:
        raise SystemExit(f"{readme} has no {START} ... {END} section.")
    body = text.split("\n", 2)[2] if text.startswith("# ") else text
    head = (
        f"{START}\n<!-- generated from {folder.as_posix()} by `python benchmarks/speed_table.py "
        f"{folder.as_posix()} --readme {readme.name}`; do not edit -->\n\n"
    )
    new = old[: old.index(START)] + head + body.strip() + "\n\n" + old[old.index(END) :]
    if new != old:
        readme.write_text(new)
    return new != old


def main() -> None:
    args = sys.argv[1:]
    readme = None
    if "--readme" in args:
        i = args.index("--readme")
        readme = Path(args[i + 1])
        del args[i : i + 2]
    folder = Path(args[0])
    text = tables(folder)
    if readme is None:
        print(text)
    else:
        changed = into_readme(readme, folder, text)
        print(f"{readme}: {'updated' if changed else 'up to date'}")


def tables(folder: Path) -> str:
    """The record's tables as markdown."""
    k = load(folder, "kernels.json")
    m = load(folder, "models.json")
    lce = load(folder, "lce_conv.json")
    step = load(folder, "train_step.json")
    out = [f"# Speed and size ({folder.name})", ""]
    ort = m["env"].get("onnxruntime")
    flags = k["machine"].get("cpu_flags", [])
    out += [
        f"Machine: {k['machine'].get('cpu_model', '?')}, kernels `{k['isa']}`; commit "
        f"{m['env']['commit']}, torch {m['env']['torch']}"
        + (f", onnxruntime {ort}" if ort else "")
        + ". Every ratio is measured in one run."
        + (f" CPU flags that matter: {' '.join(flags)}." if flags else ""),
        "",
    ]
    if (folder / "COPIED").is_file():  # a --models-only record (speed_records.sh)
        out += [
            f"Only the packed models' tables were remade at {m['env']['commit'][:12]}; "
            + (folder / "COPIED").read_text().strip()
            + " (their own commit in each file).",
            "",
        ]
    out += [
        "| kernel (one thread unless said) | onebit | baseline | ratio |",
        "|---|---|---|---|",
    ]
    for r in k["xnor_gemm"]:
        if r["M"] in (16, 64) and r["K"] in (1024, 4096):
            two = r["threads"] == 2
            out.append(
                f"| XNOR GEMM M={r['M']} K={r['K']} N={r['N']}, {r['threads']} thread(s) | "
                f"{r['tera_binary_macs_per_s_per_core']:.2f} T binary MAC/s per core "
                f"({r['kernel_us']:.1f} µs in C, {r['ours_us']:.1f} µs per Python call) | "
                f"torch fp32 matmul {r['torch_fp32_us']:.1f} µs | {r['speedup_vs_torch']}x"
                + (
                    f" ({r['speedup_vs_1_thread']}x one thread in C,"
                    f" {r['call_speedup_vs_1_thread']}x per Python call)"
                    if two
                    else ""
                )
                + " |"
            )
    for r in k["binary_float_gemm"]:
        if r["threads"] == 1:
            out.append(
                f"| binary weights x float, M={r['M']} K={r['K']} N={r['N']} | {r['ours_us']:.0f} µs | "
                f"torch fp32 F.linear {r['torch_fp32_us']:.0f} µs | {r['speedup_vs_torch']}x |"
            )
            if "int8_us" in r:
                bf = (
                    f"; torch bf16 {r['torch_bf16_us']:.0f} µs "
                    f"({r['torch_bf16_us'] / r['int8_us']:.1f}x)"
                    if "torch_bf16_us" in r
                    else ""
                )
                out.append(
                    f"| same, 8-bit activations (opt-in), M={r['M']} | {r['int8_us']:.0f} µs | "
                    f"torch fp32 {r['torch_fp32_us']:.0f} µs{bf} | "
                    f"{r['torch_fp32_us'] / r['int8_us']:.1f}x |"
                )
    c = k["binary_conv2d"]
    out.append(
        f"| binary conv 3x3, 256 ch, 14x14, batch 1 | {c['ours_us']:.0f} µs | torch fp32 conv2d "
        f"{min(c['torch_fp32_us'].values()):.0f} µs | {c['speedup_vs_torch']}x |"
    )
    ratios = lce["ratios"]
    out.append(
        f"| same conv against Larq Compute Engine {lce.get('lce_version', '')} | "
        f"{1000 * lce['onebit_ms']:.0f} µs | LCE `{lce['lce_kernel']}` {1000 * lce['lce_ms']:.0f} µs | "
        f"{ratios['speedup_vs_lce']:.1f}x |"
    )
    out += [
        "",
        "XNOR GEMM rates and thread scaling are of the kernel timed in C "
        "(`_native.time_xnor_gemm`, blocks of 20 calls alternating 1 and 2 threads); the ratio "
        "to torch compares Python calls of both (`onebit.kernels.xnor_gemm` against `F.linear`), "
        "and the Python call's own 2-thread ratio is shown beside the kernel's.",
        "",
    ]
    out += model_lines(m)
    if (folder / "models_b256.json").is_file():  # batch 256, measured beside the others
        out += ["", "The same models at batch 256 (`models_b256.json`, 6 repeats per round):", "",
                *model_lines(load(folder, "models_b256.json"))[2:]]  # fmt: skip
    if (folder / "xnor_limit.json").is_file():
        out += ["", *limit_lines(load(folder, "xnor_limit.json"))]
    out += [
        "",
        "| model | binary layers, float | binary layers, packed | ratio | whole model, float | whole model, packed |",
        "|---|---|---|---|---|---|",
    ]
    for case in m["results"]:
        fb, pb = case["binary_layers_float_bytes"], case["binary_layers_packed_bytes"]
        out.append(
            f"| {case['case']} | {fb / 2**20:.2f} MiB | {pb / 2**20:.3f} MiB | {fb / pb:.0f}x | "
            f"{case['model_float_bytes'] / 2**20:.2f} MiB | {case['model_packed_bytes'] / 2**20:.3f} MiB |"
        )
    own = folder / "own_models" / "README.md"
    if own.is_file():  # bench_own_models.py's table, its title dropped
        out += ["", "Models written outside onebit (`own_models/`):", "",
                *own.read_text().split("\n", 2)[2].strip().splitlines()]  # fmt: skip
    out += ["", *train_step_lines(step)]
    if (folder / "epoch_time.json").is_file():
        ep = load(folder, "epoch_time.json")
        out += [
            "",
            "Seconds per epoch of the Fashion-MNIST MLP recipe (50k examples, batch 100, Adam, "
            f"BatchNorm after every layer), training plus validation, {ep['threads']} threads, "
            f"last of {ep['epochs']} epochs, median of {ep['repeats']} passes, onebit and Larq 0.14 "
            "in the same run:",
            "",
            "| method | onebit | Larq 0.14 | onebit faster by |",
            "|---|---|---|---|",
        ]
        for m, r in ep["median"].items():
            o, lq = r["onebit"], r["larq"]
            out.append(f"| {m} | {o:.1f} | {lq:.1f} | {lq / o:.2f}x |")
    out += [
        "",
        "Made with `benchmarks/speed_records.sh`.",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    main()
