"""Tables of a `make test-profile` log (tests/suite_profile/sitecustomize.py): where the suite's CPU went.

    .venv/bin/python tests/suite_profile/report.py .pytest_cache/suite-profile.jsonl [--top 25]
"""

import argparse
import collections
import json


def test_file(test: str) -> str:
    return test.split("::")[0] or "(no test running)"


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

    by_file = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for r in compiled:
        by_file[test_file(r["test"])][0] += r["seconds"]
    for r in commands:
        by_file[test_file(r["test"])][1] += r["cpu"]
        by_file[test_file(r["test"])][2] += 1
    print(f"{'test file':<44} {'compiling s':>11} {'commands CPU s':>14} {'commands':>8}")
    for name, (seconds, cpu, count) in sorted(by_file.items(), key=lambda kv: -kv[1][0] - kv[1][1])[:args.top]:
        print(f"{name:<44} {seconds:>11.1f} {cpu:>14.1f} {count:>8}")

    programs = collections.defaultdict(lambda: [0.0, 0])
    for r in compiled:
        key = (test_file(r["test"]), r["program"])
        programs[key][0] += r["seconds"]
        programs[key][1] += 1
    print(f"\n{'compiled program':<24} {'times':>5} {'s':>7}  test file")
    for (name, program), (seconds, count) in sorted(programs.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{program[:24]:<24} {count:>5} {seconds:>7.1f}  {name}")

    started = collections.defaultdict(lambda: [0.0, 0])
    for r in commands:
        key = " ".join(r["command"].split()[:2])
        started[key][0] += r["cpu"]
        started[key][1] += 1
    print(f"\n{'command':<60} {'times':>5} {'CPU s':>7}")
    for command, (cpu, count) in sorted(started.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"{command[:60]:<60} {count:>5} {cpu:>7.1f}")


if __name__ == "__main__":
    main()
