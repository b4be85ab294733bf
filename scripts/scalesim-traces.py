#!/usr/bin/env python3
"""Writes twenty-eight traces that are not in ferry-scalesim's built-in suite, to check that the
policy was not fitted to the suite (docs/autoscaling.md, "Traces outside the suite"):

    python3 scripts/scalesim-traces.py out/traces
    for t in out/traces/*.csv; do
      cargo run --release -p ferry-operator --bin ferry-scalesim -- --trace "$t" --out out/sim
    done

Each line is `second,arrivals[,mean service seconds]`; arrivals are Poisson around the rate
below (clumps: Poisson clumps of random size), from a fixed seed, so the files are the same
on every machine.
"""
import math
import os
import random
import sys


def poisson(rng, rate):
    if rate < 30:
        limit, k, p = math.exp(-rate), 0, 1.0
        while True:
            p *= rng.random()
            if p < limit:
                return k
            k += 1
    return max(0, int(rng.gauss(rate, math.sqrt(rate)) + 0.5))


def clumped(rng, clumps_per_second, mean_size):
    """Messages that come in clumps (a partner replaying a batch of webhooks, a job fanning
    out): a Poisson number of clumps, each of a geometric size; the counts per second vary
    `2 * mean_size - 1` times as much as Poisson's (variance over mean) for the same mean."""
    total = 0
    for _ in range(poisson(rng, clumps_per_second)):
        size = 1
        while rng.random() > 1 / mean_size:
            size += 1
        total += size
    return total


def write(rng, path, rates, service=None, arrivals=poisson):
    with open(path, "w") as out:
        for second, rate in enumerate(rates):
            n = arrivals(rng, rate)
            if n == 0:
                continue
            if service:
                out.write(f"{second},{n},{service(second):.3f}\n")
            else:
                out.write(f"{second},{n}\n")


def write_each(rng, directory, traces):
    for name, rates, service in traces:
        path = os.path.join(directory, f"{name}.csv")
        write(rng, path, rates, service)
        print(path)


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "target/scalesim-traces"
    os.makedirs(directory, exist_ok=True)
    rng = random.Random(7)
    traces = [
        # 0 -> 300 msg/s over 40 minutes, then 10 minutes at 300
        ("ramp", [min(300, t * 300 / 2400) for t in range(3000)], None),
        # 5-minute cycles rising from 10 to 150 msg/s and dropping back at once
        ("sawtooth", [10 + 140 * ((t % 300) / 300) for t in range(3600)], None),
        # 20 minutes at 5 msg/s, 20 at 80, twice
        ("onoff", [80 if (t // 1200) % 2 else 5 for t in range(4800)], None),
        # 10 msg/s of 5 s jobs
        ("slow-service", [10] * 2400, lambda t: 5.0),
        # 30 msg/s whose jobs go from 0.2 s to 2 s after 20 minutes
        ("svc-shift", [30] * 3600, lambda t: 0.2 if t < 1200 else 2.0),
        # 50 msg/s with 10 s pulses of 250 every 7.5 minutes
        ("pulses", [250 if (t % 450) < 10 else 50 for t in range(3600)], None),
    ]
    write_each(rng, directory, traces)
    # 20 msg/s for an hour, in clumps of 5 on average (4 clumps a second)
    path = os.path.join(directory, "clumps.csv")
    write(rng, path, [4] * 3600, arrivals=lambda rng, rate: clumped(rng, rate, 5))
    print(path)
    more = [
        # a spike to 405 msg/s every 30 minutes decaying back to 5 (time constant 200 s)
        ("decay", [5 + 400 * math.exp(-(t % 1800) / 200) for t in range(5400)], None),
        # one message every 10 minutes on average, for two hours
        ("sparse", [1 / 600] * 7200, None),
        # a week at one minute per second: 10-110 msg/s by day, weekends at a fifth
        ("weekly", [max(0, 60 + 50 * math.sin(2 * math.pi * t / 1440)
                        * (1 if (t // 1440) % 7 < 5 else 0.2)) for t in range(10080)], None),
        # 40 msg/s whose seconds bring 2 s jobs one time in four and 0.1 s jobs otherwise
        ("svc-mix", [40] * 3600, lambda t: 2.0 if rng.random() < 0.25 else 0.1),
        # 2 msg/s with a 5 s storm of 300 msg/s every 10 minutes
        ("storms", [300 if (t % 600) < 5 else 2 for t in range(3600)], None),
        # 0.2 msg/s with 30 s at 60 msg/s every 15 minutes
        ("trickle-burst", [0.2 if (t % 900) > 30 else 60 for t in range(3600)], None),
    ]
    write_each(rng, directory, more)
    # 5,000 messages at once every 20 minutes and nothing between (a cron job's fan-out)
    path = os.path.join(directory, "cron.csv")
    with open(path, "w") as out:
        for run in range(4):
            out.write(f"{run * 1200},5000\n")
    print(path)
    last = [
        # exponential growth from 0.1 to 300 msg/s over an hour (doubling every 5 minutes),
        # then 10 minutes at 300
        ("growth", [0.1 * 3000 ** (min(t, 3600) / 3600) for t in range(4200)], None),
        # 0.2 msg/s of 120 s jobs: every job is four times the latency target
        ("very-long-jobs", [0.2] * 3600, lambda t: 120.0),
        # 1,000 msg/s of 10 ms jobs: 10 slots' worth of work
        ("tiny-jobs", [1000] * 1800, lambda t: 0.01),
        # 2 msg/s whose jobs take 0.5 s one minute and 20 s the next
        ("alt-length", [2] * 3600, lambda t: 20.0 if (t // 60) % 2 else 0.5),
        # a working day in two hours (5 minutes per hour): 0.05 msg/s at night, 40 by day
        # with a lunchtime dip to half
        ("business", [40 * (1 - 0.5 * math.exp(-((t / 300 - 12.5) ** 2) / 0.5))
                      if 8 <= t / 300 < 18 else 0.05 for t in range(7200)], None),
    ]
    write_each(rng, directory, last)
    walk = [50.0]
    for _ in range(3599):
        walk.append(min(150.0, max(5.0, walk[-1] + rng.gauss(0, 2))))
    after_planned_queue = [
        # 10-200 msg/s in 10-minute sine waves
        ("fast-sine", [105 + 95 * math.sin(2 * math.pi * t / 600) for t in range(3600)], None),
        # 200 msg/s for 20 minutes, then 20
        ("step-down", [200 if t < 1200 else 20 for t in range(2400)], None),
        # 40 msg/s whose jobs slow down from 0.5 s to 3 s over the hour
        ("drift-svc", [40] * 3600, lambda t: 0.5 + 2.5 * t / 3600),
        # 700 msg/s: 44 of the 50 replicas maxReplicas allows
        ("near-max", [700] * 1800, None),
        # 300 msg/s down to 10 and back up over an hour
        ("triangle", [10 + 290 * abs(t - 1800) / 1800 for t in range(3600)], None),
        # a rate that wanders between 5 and 150 msg/s (steps of 2 msg/s a second)
        ("random-walk", walk, None),
        # 50 msg/s with 2 s at 500 every 30 s
        ("micro-bursts", [500 if t % 30 < 2 else 50 for t in range(3600)], None),
        # 3 msg/s for an hour: less than one replica's worth
        ("low-steady", [3] * 3600, None),
    ]
    write_each(rng, directory, after_planned_queue)
    after_approximate_counts = [
        # a real day, not compressed: 5 msg/s at midnight, 95 at noon, in a cosine
        (
            "real-day",
            [50 - 45 * math.cos(2 * math.pi * t / 86400) for t in range(86400)],
            None,
        ),
    ]
    write_each(rng, directory, after_approximate_counts)


if __name__ == "__main__":
    main()
