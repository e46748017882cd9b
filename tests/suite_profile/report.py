"""Tables of a `make test-profile` log (tests/suite_profile/sitecustomize.py): where the suite's CPU went.

    .venv/bin/python tests/suite_profile/report.py .pytest_cache/suite-profile.jsonl [--top 25]
"""

import argparse
import collections
import json


def test_file(record: dict) -> str:
    return record["test"].split("::")[0] or "(no test running)"


def totals(records: list[dict], key, value: str) -> tuple[collections.Counter, collections.Counter]:
    """(the sum of each record's `value`, the number of records) per `key(record)`."""
    sums, counts = collections.Counter(), collections.Counter()
    for r in records:
        sums[key(r)] += r[value]
        counts[key(r)] += 1
    return sums, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    args = parser.parse_args()
    records = [json.loads(line) for line in open(args.log, encoding="utf-8")]
    exits = [r for r in records if r["kind"] == "exit"]
    compiles = [r for r in records if r["kind"] == "compile"]
    pytest_cpu = sum(r["cpu"] for r in exits if r["pytest"])
    commands = [r for r in exits if not r["pytest"]]
    compiled = [r for r in compiles if not r["cached"]]
    print(f"CPU: {pytest_cpu:,.0f} s in {len(exits) - len(commands)} pytest processes, "
          f"{sum(r['cpu'] for r in commands):,.0f} s in {len(commands)} commands the tests started "
          "(a process killed by a signal writes no exit record)")
    print(f"XLA compilations: {len(compiled):,} compiled, {sum(r['seconds'] for r in compiled):,.0f} s "
          f"(wall, each in its own process); {len(compiles) - len(compiled):,} loaded from the persistent cache, "
          f"{sum(r['seconds'] for r in compiles if r['cached']):,.0f} s\n")

    compiling = totals(compiled, test_file, "seconds")[0]
    started_cpu, started = totals(commands, test_file, "cpu")
    print(f"{'test file':<44} {'compiling s':>11} {'commands CPU s':>14} {'commands':>8}")
    for name in sorted(compiling.keys() | started_cpu.keys(), key=lambda n: -compiling[n] - started_cpu[n])[:args.top]:
        print(f"{name:<44} {compiling[name]:>11.1f} {started_cpu[name]:>14.1f} {started[name]:>8}")

    seconds, times = totals(compiled, lambda r: (r["program"], test_file(r)), "seconds")
    print(f"\n{'compiled program':<24} {'times':>5} {'s':>7}  test file")
    for (program, name), total in seconds.most_common(args.top):
        print(f"{program[:24]:<24} {times[program, name]:>5} {total:>7.1f}  {name}")

    cpu, times = totals(commands, lambda r: " ".join(r["command"].split()[:2]), "cpu")
    print(f"\n{'command':<60} {'times':>5} {'CPU s':>7}")
    for command, total in cpu.most_common(args.top):
        print(f"{command[:60]:<60} {times[command]:>5} {total:>7.1f}")


if __name__ == "__main__":
    main()
