#!/usr/bin/env python3
"""Compares two tpcomm-bench JSON files case by case (A/B of one suite).

  scripts/compare_results.py A.json B.json [--min-delta 0.01]

quantize: prints the cases whose ratio to the copy rate moved by at least --min-delta (points / 100), and how many
cases reach 85% in each file. all_reduce: prints graph-mode us of every impl and size in both files.
Only compare files from one device call: runs on different machines of the same kind differ by up to 3 points
(bench/NOTES.md, session 5).
"""
import argparse
import json


def quantize_key(r):
    return (r["kernel"], tuple(r["shape"]), r.get("scale_mode"), r.get("scale_layout"), r.get("format"))


def compare_quantize(a, b, min_delta):
    ra = {quantize_key(r): r for r in a["results"]}
    passed_a = passed_b = 0
    for r in b["results"]:
        k = quantize_key(r)
        if k not in ra:
            continue
        x = ra[k]
        passed_a += x["ratio"] >= 0.85
        passed_b += r["ratio"] >= 0.85
        if abs(r["ratio"] - x["ratio"]) >= min_delta or not r.get("correct", True):
            print(f"{k[0]:22s} {str(list(k[1])):18s} {str(k[2]):6s} {str(k[3])[:4]:4s} "
                  f"graph {x['us_graph']:8.2f} -> {r['us_graph']:8.2f} us  ratio {x['ratio']:.3f} -> {r['ratio']:.3f}"
                  f"{'' if r.get('correct', True) else '  INCORRECT'}")
    print(f"copy GB/s {a.get('copy_GBps')} / {b.get('copy_GBps')}; cases >= 85%: {passed_a} -> {passed_b} "
          f"of {len(b['results'])}")


def compare_all_reduce(a, b):
    key = lambda r: (r["impl"], r["dtype"], r["bytes"], r["mode"])
    ra = {key(r): r for r in a["results"]}
    for r in b["results"]:
        x = ra.get(key(r))
        if x is None or r["mode"] != "graph":
            continue
        print(f"{r['impl']:18s} {r['dtype']:5s} {r['bytes']:>11d}  {x['us']:9.2f} -> {r['us']:9.2f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--min-delta", type=float, default=0.01)
    o = ap.parse_args()
    with open(o.a) as fa, open(o.b) as fb:
        a, b = json.load(fa), json.load(fb)
    suite = b["results"][0].get("suite") if b["results"] else None
    if suite == "quantize":
        compare_quantize(a, b, o.min_delta)
    elif suite == "all_reduce":
        compare_all_reduce(a, b)
    else:
        raise SystemExit(f"unsupported suite: {suite}")


if __name__ == "__main__":
    main()
