"""Long mutation-fuzzing run of the decoder through its worker pool (default 10,000 cases).

hypothesis draws the cases (seed corpus files plus mutations, tests/fuzz/mutations.py); they
are then decoded through a DecoderPool with one thread per worker, so every worker is busy.
Property, as in tests/fuzz/test_fuzz_decoder.py: each case decodes or fails with
INVALID_ARGUMENT/RESOURCE_EXHAUSTED. Crashes and hangs the pool contained are listed with
their seed file and mutations (--save writes their bytes for reproduction); violations make
the exit status 1.

    .venv/bin/python load_tests/fuzz_decoder.py [--cases 10000] [--seed 0] [--save DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from hypothesis import HealthCheck, Phase, given, seed, settings

from services.common.errors import PlatformError
from services.common.settings import DecodeLimits, DecoderSettings
from services.decoder.pool import DecoderPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fuzz"))
from mutations import Case, cases, seed_paths

LIMITS = DecodeLimits(max_pixels=2**24, max_decoded_bytes=2**26)
EXPECTED_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


def draw_cases(count: int, seeds: list[str], random_seed: int) -> list[Case]:
    drawn: list[Case] = []

    @seed(random_seed)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases(seeds))
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    return drawn


def outcome(pool: DecoderPool, case: Case) -> tuple[str, str]:
    """(kind, detail): decoded, a domain error's class, contained, or violation."""
    try:
        image = pool.decode(case.data(), LIMITS)
    except PlatformError as err:
        if err.code not in EXPECTED_CODES:
            return "violation", f"{err.code.name}: {err.reason}"
        if "decoder process" in err.reason or "took longer" in err.reason:
            return "contained", err.reason
        return type(err).__name__, ""
    if image.pixels.ndim != 4 or image.pixels.size == 0:
        return "violation", f"decoded to shape {image.pixels.shape}"
    return "decoded", ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    parser.add_argument("--workers", type=int, default=DecoderSettings().decode_workers)
    parser.add_argument("--timeout", type=float, default=5.0, help="per-case decode limit, s")
    parser.add_argument("--save", type=Path, help="write crashing/hanging inputs here")
    args = parser.parse_args()

    seeds = seed_paths()
    start = time.perf_counter()
    drawn = draw_cases(args.cases, seeds, args.seed)
    drawn_s = time.perf_counter() - start
    print(f"{len(drawn)} cases drawn by hypothesis from {len(seeds)} seed files in {drawn_s:.1f} s")

    counts: Counter[str] = Counter()
    findings: list[tuple[str, Case, str]] = []
    with DecoderPool(args.workers, args.timeout, memory_bytes=2**30) as pool:
        pool.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.workers) as threads:
            results = threads.map(lambda case: (case, *outcome(pool, case)), drawn)
            for done, (case, kind, detail) in enumerate(results, 1):
                counts[kind] += 1
                if kind in ("contained", "violation"):
                    findings.append((kind, case, detail))
                if done % 1000 == 0:
                    rate = done / (time.perf_counter() - start)
                    print(f"  {done} cases, {rate:.1f} cases/s", flush=True)
        elapsed = time.perf_counter() - start

    print(
        f"\n{len(drawn)} cases in {elapsed:.1f} s: {len(drawn) / elapsed:.1f} cases/s "
        f"through {args.workers} workers"
    )
    print("outcomes:", dict(counts.most_common()))
    for number, (kind, case, detail) in enumerate(findings):
        print(f"\n{kind}: {detail}\n  seed {case.seed}\n  mutations {list(case.mutations)}")
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{kind}-{number}.dcm").write_bytes(case.data())
    return 1 if counts["violation"] else 0


if __name__ == "__main__":
    sys.exit(main())
