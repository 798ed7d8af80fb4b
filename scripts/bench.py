#!/usr/bin/env python
"""Speed and memory benchmarks, JSON out: `python scripts/bench.py {train,sample,plot,prepare,video} [options]`.

Each part lives in scripts/bench_<part>.py with `main(argv) -> dict`; this prints the dict as JSON.
Targets are checked here, never by timed tests. See docs/performance.md before trusting a number.
"""

import importlib
import json
import sys
from pathlib import Path

PARTS = ["train", "sample", "plot", "prepare", "video", "quality"]


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in PARTS:
        print(f"usage: python scripts/bench.py {{{','.join(PARTS)}}} [options]", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).parent))
    result = importlib.import_module(f"bench_{sys.argv[1]}").main(sys.argv[2:])
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
