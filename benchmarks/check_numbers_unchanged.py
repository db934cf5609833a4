"""Compare two study ``results.csv`` files cell by cell on every metric column (time columns excluded).

Usage::

    python benchmarks/check_numbers_unchanged.py BEFORE/results.csv AFTER/results.csv [...more pairs]

Exit status 0 when every shared row (by ``run_id``) has identical text in every non-time column and both
files have the same rows and columns; 1 otherwise, listing the first differences. Time columns are those
named ``seconds`` or containing ``seconds`` (wall time is not a number the code computes).
"""

from __future__ import annotations

import csv
import sys


def _is_time(column: str) -> bool:
    return "seconds" in column or column == "curve_overhead_pct"  # wall time, or a share of it


def _read(path: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = {row["run_id"]: row for row in reader}
        return list(reader.fieldnames or []), rows


def compare(before: str, after: str) -> list[str]:
    """Human-readable differences between two results tables (empty when they agree)."""
    cols_b, rows_b = _read(before)
    cols_a, rows_a = _read(after)
    problems = []
    if cols_b != cols_a:
        problems.append(
            f"columns differ: only before {sorted(set(cols_b) - set(cols_a))}, "
            f"only after {sorted(set(cols_a) - set(cols_b))}"
        )
    if list(rows_b) != list(rows_a):
        problems.append(f"run ids differ: before {list(rows_b)}, after {list(rows_a)}")
    checked = [c for c in cols_b if c in cols_a and not _is_time(c)]
    for run_id in rows_b.keys() & rows_a.keys():
        for col in checked:
            if rows_b[run_id][col] != rows_a[run_id][col]:
                problems.append(f"{run_id} {col}: {rows_b[run_id][col]!r} -> {rows_a[run_id][col]!r}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__)
        return 2
    status = 0
    for before, after in zip(argv[::2], argv[1::2]):
        problems = compare(before, after)
        _, rows = _read(before)
        cols, _ = _read(after)
        n_metric = len([c for c in cols if not _is_time(c)])
        if problems:
            status = 1
            print(f"DIFFERENT {before} vs {after}: {len(problems)} problems")
            for line in problems[:20]:
                print("  " + line)
        else:
            print(f"IDENTICAL {before} vs {after}: {len(rows)} runs x {n_metric} non-time columns")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
