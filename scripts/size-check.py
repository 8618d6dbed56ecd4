#!/usr/bin/env python3
"""Checks issue 22's size limits: no source file over MAX_FILE lines and no function over
MAX_FN lines, tests excepted (files named tests.rs or under tests/, and `#[cfg(test)]`
modules).

    scripts/size-check.py [--max-file N] [--max-fn N] [--top N] [PATH ...]

PATH is a directory searched for *.rs or a file (default: crates). Prints every file and
function over its limit, then the longest functions; exits 1 if anything is over.

A function's length runs from its `fn` line to its closing brace. Braces are counted
outside comments, strings and character literals; good enough for rustfmt-formatted code
(raw strings with braces inside are the known blind spot).
"""

import argparse
import pathlib
import re
import sys

FN = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?"
                r"(?:extern\s+\"[^\"]*\"\s+)?fn\s+(\w+)")
CFG_TEST = re.compile(r"^\s*#\[cfg\(test\)\]")


def code_only(line, state):
    """`line` with comments, strings and char literals blanked; `state` carries an open
    block comment or string across lines."""
    out = []
    i = 0
    while i < len(line):
        c = line[i]
        nxt = line[i + 1] if i + 1 < len(line) else ""
        if state["block"]:
            if c == "*" and nxt == "/":
                state["block"] -= 1
                i += 2
                continue
            if c == "/" and nxt == "*":
                state["block"] += 1
                i += 2
                continue
            i += 1
            continue
        if state["string"]:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                state["string"] = False
            i += 1
            continue
        if c == "/" and nxt == "/":
            break
        if c == "/" and nxt == "*":
            state["block"] += 1
            i += 2
            continue
        if c == '"':
            state["string"] = True
            i += 1
            continue
        if c == "'":
            # A char literal ('x', '\n', '{'), not a lifetime ('a).
            m = re.match(r"'(\\.[^']*|[^\\'])'", line[i:])
            if m:
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(path):
    """(name, first line, length) of every function outside `#[cfg(test)]` items."""
    lines = path.read_text().splitlines()
    state = {"block": 0, "string": False}
    depth = 0
    skip_below = None  # depth at which a #[cfg(test)] item began
    pending_test = False
    open_fns = []  # (name, start line, depth outside its body)
    found = []
    for no, raw in enumerate(lines, 1):
        code = code_only(raw, state)
        if skip_below is None and CFG_TEST.match(raw):
            pending_test = True
        m = FN.match(code)
        if m and skip_below is None and not pending_test:
            open_fns.append((m.group(1), no, depth))
        for c in code:
            if c == "{":
                if pending_test:
                    skip_below, pending_test = depth, False
                depth += 1
            elif c == "}":
                depth -= 1
                if skip_below is not None and depth == skip_below:
                    skip_below = None
                if open_fns and depth == open_fns[-1][2]:
                    name, start, _ = open_fns.pop()
                    found.append((name, start, no - start + 1))
            elif c == ";":
                # A declaration without a body (a trait's), or `#[cfg(test)] mod x;`.
                if open_fns and depth == open_fns[-1][2] and open_fns[-1][1] == no:
                    open_fns.pop()
                if pending_test and depth == (skip_below or depth):
                    pending_test = False
    return len(lines), found


def is_test_file(path):
    return path.name == "tests.rs" or "tests" in path.parts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-file", type=int, default=1000)
    ap.add_argument("--max-fn", type=int, default=150)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("paths", nargs="*", default=["crates"])
    args = ap.parse_args()
    files = []
    for p in map(pathlib.Path, args.paths):
        files += sorted(p.rglob("*.rs")) if p.is_dir() else [p]
    over = []
    every_fn = []
    for f in files:
        if is_test_file(f):
            continue
        n, fns = functions(f)
        if n > args.max_file:
            over.append(f"{f}: {n} lines (limit {args.max_file})")
        for name, start, length in fns:
            every_fn.append((length, f"{f}:{start} {name}"))
            if length > args.max_fn:
                over.append(f"{f}:{start}: fn {name} is {length} lines (limit {args.max_fn})")
    for line in over:
        print("OVER", line)
    every_fn.sort(reverse=True)
    for length, where in every_fn[: args.top]:
        print(f"{length:5} {where}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
