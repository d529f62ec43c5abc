#!/usr/bin/env python3
"""Print a markdown table of mean error per method from `attune run` adapt results.

    python3 scripts/methods_table.py runs/methods/*/result.json

One row per result (dataset, setting), one column per method: mean error over the domains in %,
then the forgetting (clean error before → after) and collapse alarms per method.
"""
import json
import sys


def main(paths):
    results = [json.load(open(p)) for p in paths]
    methods = []
    for r in results:
        for m in r["methods"]:
            if m["name"] not in methods:
                methods.append(m["name"])
    print("| dataset | setting | " + " | ".join(methods) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in methods) + " |")
    for r in results:
        by = {m["name"]: m for m in r["methods"]}
        src = by.get("source", {}).get("mean", {}).get("error")
        cells = []
        for name in methods:
            m = by.get(name)
            if m is None:
                cells.append("")
                continue
            e = 100 * m["mean"]["error"]
            cell = f"{e:.1f}"
            if src is not None and name != "source" and m["mean"]["error"] < src:
                cell = f"**{cell}**"
            if m.get("collapse"):
                cell += " ⚠"
            cells.append(cell)
        s = r["stream"]
        print(f"| {s['dataset']} | {s['setting']} | " + " | ".join(cells) + " |")
    print()
    print("Bold: below Source. ⚠: the collapse alarm fired (running error more than the margin above")
    print("Source's on the same batches). Clean error before → after the stream (forgetting), %:")
    print()
    print("| dataset | setting | " + " | ".join(methods) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in methods) + " |")
    for r in results:
        by = {m["name"]: m for m in r["methods"]}
        cells = []
        for name in methods:
            f = (by.get(name) or {}).get("forgetting")
            cells.append("" if not f else f"{100 * f['before']['error']:.1f} → {100 * f['after']['error']:.1f}")
        s = r["stream"]
        print(f"| {s['dataset']} | {s['setting']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
