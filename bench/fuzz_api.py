"""Fuzz the published API of a real `latentbridge serve` and print the counts, in one run.

    python bench/fuzz_api.py                       # >= 5,000 schemathesis cases + 3,000 ws connections (~20 min)
    python bench/fuzz_api.py --max-examples 80 --ws-examples 500 --seed 7

1. schemathesis against /api/v1/openapi.json (all its checks; positive_data_acceptance replaced
   by the same rule that also allows the documented pixel-budget 413, see
   tests/server/schemathesis_hooks.py), phases examples, coverage, fuzzing and stateful;
   `--max-examples` per operation. Printed: cases generated and failures by kind.
2. Websocket fuzz: hypothesis draws 1-5 garbled frames per connection (JSON close to valid
   messages, arbitrary text and bytes, binary headers, bad opcodes/bits/masks/lengths); after them
   a ping must be answered, or the connection closed with a clean code. Printed: connections,
   frames, failures.
3. The server's log: tracebacks and ERROR lines (must be 0).

The machinery is the suite's (tests/server/api_fuzz.py, where CI runs a bounded subset); the
server runs the tiny model with small limits, so every job the fuzzers submit costs milliseconds.
Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from api_fuzz import health_ok, run_schemathesis, run_ws_fuzz, start_server  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=360, help="schemathesis cases per operation and phase")
    parser.add_argument("--ws-examples", type=int, default=3000, help="websocket fuzz connections")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--verbose", "-v", action="store_true", help="Print schemathesis' report on failures")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="latentbridge-fuzz-") as tmp:
        server = start_server(Path(tmp))
        try:
            start = time.monotonic()
            api = run_schemathesis(server.port, args.max_examples, args.seed, Path(tmp) / "report")
            api_s = time.monotonic() - start
            print(f"schemathesis: {api.cases} cases in {api_s:.0f} s, {len(api.failures)} failures")
            for failure in api.failures:
                print(f"  {failure}")
            start = time.monotonic()
            ws = run_ws_fuzz(server.port, args.ws_examples, args.seed)
            ws_s = time.monotonic() - start
            print(f"websocket fuzz: {ws.connections} connections, {ws.frames} frames in {ws_s:.0f} s, "
                  f"{len(ws.failures)} failures")
            for failure in ws.failures[:20]:
                print(f"  {failure}")
            alive = health_ok(server.port)
            print(f"server still healthy: {alive}")
        finally:
            server.stop()
        tracebacks = sum("Traceback" in line for line in server.lines)
        errors = sum(" ERROR " in line for line in server.lines)
        print(f"server log: {len(server.lines)} lines, {tracebacks} tracebacks, {errors} ERROR lines")
        for i, line in enumerate(server.lines):
            if " ERROR " in line or "Traceback" in line:
                print("\n".join(server.lines[i:i + 80]))  # the first one, in full
                break
        if api.failures and args.verbose:
            print(api.output[-20000:])
    return 0 if not api.failures and not ws.failures and alive and not tracebacks and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
