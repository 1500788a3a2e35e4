"""BOARD EMULATOR — the SDK's `model_runner`, faked on the host for duotpu's tests.

Runs the cvimodel on the host's CV18xx simulator (through duotpu's toolchain) and prints what the
real binary prints. Configured by emulator.json beside bin/ (runtime_version, chip, fail).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]


def main() -> int:
    cfg = json.loads((SDK / "emulator.json").read_text())
    rt = cfg.get("runtime_version", "1.4.0")
    print(f"Cvitek Runtime ({rt}) [board emulator: host CV18xx simulator]", flush=True)
    ap = argparse.ArgumentParser(prog="model_runner")
    ap.add_argument("-m", "--model")
    ap.add_argument("-i", "--input")
    ap.add_argument("-o", "--output")
    ap.add_argument("-c", "--count", type=int, default=1)
    ap.add_argument("-s", "--program-id", type=int, default=0)
    ap.add_argument("--enable-timer", action="store_true")
    args = ap.parse_args()
    if not args.model:
        ap.print_usage()
        return 1
    if cfg.get("fail") == "nodevice":
        print("open /dev/cvi-tpu0 failed", file=sys.stderr)
        return 1
    from duotpu import compiler, cvimodel

    info = cvimodel.read_cvimodel(args.model)
    mv = ".".join(info.version.split(".")[:2])
    if tuple(map(int, mv.split("."))) > tuple(map(int, rt.split(".")[:2])):
        print(
            f"cvimodel({mv}) is not supported in runtime({'.'.join(rt.split('.')[:2])})",
            file=sys.stderr,
        )
        print("Please update runtime lib.", file=sys.stderr)
        return 1
    chip = cfg.get("chip", "cv180x")
    if info.chip != chip:
        print(f"cvimodel built for {info.chip} CANNOT run on platform {chip}", file=sys.stderr)
        return 1
    if cfg.get("fail") == "nomem" or info.ion_mb > cfg.get("ion_mb", 1e9):
        print(f"alloc memory for weight failed, size:{info.weight_bytes}", file=sys.stderr)
        print("failed to alloc private gmem", file=sys.stderr)
        return 1
    print(f"cvimodel's version:{mv}")
    p = info.programs[args.program_id]
    print("Inputs:")
    for k, t in enumerate(p.inputs):
        print(
            f"  [{k}] {t.name} <{','.join(map(str, t.shape))}>,{t.dtype}, qscale:{t.qscale:f}, "
            f"zero_point: {int(t.zero_point)}"
        )
    print("Outputs:")
    for k, t in enumerate(p.outputs):
        print(
            f"  [{k}] {t.name} <{','.join(map(str, t.shape))}>,{t.dtype}, qscale:{t.qscale:f}, "
            f"zero_point: {int(t.zero_point)}"
        )
    out = Path(args.output) if args.output else Path(args.input or "x").with_suffix(".out.npz")
    pmu = os.environ.pop("TPU_ENABLE_PMU", None)  # the host simulator asserts on it
    t0 = time.monotonic()
    if args.input:
        compiler.run_cvimodel(
            Path(args.model), Path(args.input), out.resolve(), out.with_suffix(".log")
        )
    ms = (time.monotonic() - t0) * 1000
    tdma_part, tiu_part = 0.4, 0.6
    truth = cfg.get("latency")  # a board whose TPU behaves like the estimate with these constants
    if truth:
        from duotpu import latency

        est = latency.estimate(Path(args.model), latency.constants_for(info.chip, truth))
        ms, tdma_part, tiu_part = est.ms, est.tdma_ms / est.ms, est.tiu_ms / est.ms
    if pmu == "1":
        for k in range(args.count):
            inf = ms * (1 + (0.02 * (k % 5) if not truth else 0.0))
            print(f"{chip}_tpu_clock: 500Mhz, inferece_data: 1.00MB, inference_bw: 100.00MB/s")
            print("tdma_exe_tick: 1t, tiu_exe_tick 1t, inference_tick 1t")
            print(
                f"tdma_exe_percent: {tdma_part * 100:.2f}%, tiu_exe_percent: {tiu_part * 100:.2f}%"
            )
            print(
                f"tdma_exe_ms: {inf * tdma_part:.4f}ms, tiu_exe_ms: {inf * tiu_part:.4f}ms, "
                f"inference_ms: {inf:.4f}ms"
            )
    if args.enable_timer:
        print(
            f"Performance result: {args.count} runs take {ms * args.count:.2f} ms, each run "
            f"takes {ms:.2f} ms, fps {1000 / ms:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
