#!/usr/bin/env python3
"""Writes random variations of the seven kinds of traffic in ferry-scalesim's built-in suite
(steady, step, short spike, diurnal, bursty, slow drip, long jobs), four of each, with rates,
service times, sizes and timings drawn from ranges the suite does not use. They check that
the policy was not fitted to the suite's parameters (docs/autoscaling.md, "Random variations
of the suite"):

    python3 scripts/scalesim-variations.py --seed 7 out/variations-7
    cargo run --release -p ferry-operator --bin ferry-scalesim -- \\
        $(for t in out/variations-7/*.csv; do echo --trace "$t"; done) --out out/sim-7

Each line is `second,arrivals[,mean service seconds]`, arrivals Poisson around the rate drawn;
`variations.txt` in the output directory says what each trace is. The same seed writes the
same files on every machine. An hour each; the mean service time is the simulator's (0.5 s)
where no third column is written.
"""
import argparse
import importlib.util
import math
import os
import random

DURATION = 3600
KINDS = ["steady", "step", "spike", "diurnal", "bursty", "drip", "longjobs"]

# The same Poisson draw as the outside traces (scripts/scalesim-traces.py).
_traces_spec = importlib.util.spec_from_file_location(
    "scalesim_traces", os.path.join(os.path.dirname(os.path.abspath(__file__)), "scalesim-traces.py")
)
_traces = importlib.util.module_from_spec(_traces_spec)
_traces_spec.loader.exec_module(_traces)
poisson = _traces.poisson


def steady(rng):
    rate = rng.choice([0.3, 3, 25, 120, 400])
    service = rng.choice([0.05, 0.3, 1.0, 4.0])
    return f"{rate} msg/s, {service} s jobs", lambda s: rate, lambda s: service


def step(rng):
    base = rng.choice([3, 10, 30])
    factor = rng.choice([4, 10, 25])
    at = rng.randint(600, 2400)
    back = at + rng.randint(300, 900) if rng.random() < 0.5 else None
    up = lambda s: at <= s and (back is None or s < back)
    where = f"at {at} s" + (f", back at {back} s" if back else "")
    return f"{base} msg/s, x{factor} {where}", lambda s: base * factor if up(s) else base, None


def spike(rng):
    base = rng.choice([5, 20, 60])
    height = rng.choice([10, 30, 60])
    length = rng.choice([5, 20, 45, 90])
    at = rng.randint(300, 3000)
    rate = lambda s: base * height if at <= s < at + length else base
    return f"{base} msg/s, x{height} for {length} s at {at} s", rate, None


def diurnal(rng):
    low = rng.choice([2, 10, 40])
    high = low * rng.choice([3, 8, 20])
    period = rng.choice([1200, 2400, 3600, 7200])
    rate = lambda s: low + (high - low) * (0.5 - 0.5 * math.cos(2 * math.pi * s / period))
    return f"{low}..{high} msg/s, period {period} s", rate, None


def bursty(rng):
    base = rng.choice([2, 10, 30])
    peak = rng.choice([100, 300, 600])
    on = rng.choice([10, 30, 60, 120])
    off = rng.choice([60, 180, 400])
    bursting = set()
    start = rng.randint(0, off)
    while start < DURATION:
        bursting.update(range(start, start + max(3, int(rng.uniform(0.5, 1.5) * on))))
        start += on + int(rng.expovariate(1 / off))
    rate = lambda s: peak if s in bursting else base
    return f"{base} msg/s, bursts at {peak} of about {on} s every {off} s or so", rate, None


def drip(rng):
    gap = rng.choice([10, 30, 90, 200])
    service = rng.choice([0.5, 3, 15])
    return f"one message per {gap} s, {service} s jobs", lambda s: 1 / gap, lambda s: service


def longjobs(rng):
    rate = rng.choice([0.05, 0.2, 1.0, 3.0])
    service = rng.choice([20, 45, 120, 300])
    return f"{rate} msg/s of {service} s jobs", lambda s: rate, lambda s: service


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--per-kind", type=int, default=4)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(args.seed)
    described = []
    for kind in KINDS:
        for i in range(args.per_kind):
            name = f"{kind}{i}"
            description, rate, service = globals()[kind](rng)
            with open(os.path.join(args.out, f"{name}.csv"), "w") as f:
                for second in range(DURATION):
                    n = poisson(rng, max(0.0, rate(second)))
                    if n and service:
                        f.write(f"{second},{n},{service(second):.3f}\n")
                    elif n:
                        f.write(f"{second},{n}\n")
            described.append(f"{name}: {description}")
    with open(os.path.join(args.out, "variations.txt"), "w") as f:
        f.write("\n".join(described) + "\n")
    print("\n".join(described))


if __name__ == "__main__":
    main()
