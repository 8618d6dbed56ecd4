#!/usr/bin/env python3
"""Checks issue 22's size bounds on Rust sources: no file over MAX_FILE lines, no function
over MAX_FN lines. Tests are exempt (files named tests.rs, anything under a tests/
directory, `#[cfg(test)] mod ... { }` blocks), as are declarative tables (list their
functions in EXEMPT as path:name, with the reason beside them).

    scripts/check-sizes.py crates/server [more dirs or files...]

Exits 1 and lists the offenders, longest first. Functions are found by brace matching
after strings, char literals and comments are blanked out: good enough for rustfmt'd
code, not a parser.
"""
import os
import re
import sys

MAX_FILE = int(os.environ.get("MAX_FILE", 1000))
MAX_FN = int(os.environ.get("MAX_FN", 150))
EXEMPT = {
    # "crates/core/src/metrics.rs:table": "the counter table is data, one entry per counter",
}

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")
TEST_MOD = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")


def blank(line):
    """The line with string and char literals emptied and a trailing comment cut."""
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def long_functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    found = []
    depth = 0
    open_fns = []  # [name, first line, depth outside its body, body opened]
    test_depth = None  # depth outside a #[cfg(test)] module being skipped
    cfg_test = False
    for number, raw in enumerate(lines, 1):
        code = blank(raw)
        stripped = code.strip()
        if stripped.startswith("#[cfg(test)]"):
            cfg_test = True
        elif cfg_test and TEST_MOD.match(code) and test_depth is None:
            test_depth = depth
            cfg_test = False
        elif stripped and not stripped.startswith("#"):
            cfg_test = False
        match = FN.match(code)
        if match and test_depth is None:
            open_fns.append([match.group(7), number, depth, False])
        for ch in code:
            top = open_fns[-1] if open_fns else None
            if ch == "{":
                if top and not top[3] and depth == top[2]:
                    top[3] = True
                depth += 1
            elif ch == ";" and top and not top[3] and depth == top[2]:
                open_fns.pop()  # a declaration without a body (trait, extern)
            elif ch == "}":
                depth -= 1
                if top and top[3] and depth == top[2]:
                    name, first, _, _ = open_fns.pop()
                    length = number - first + 1
                    if length > MAX_FN and f"{path}:{name}" not in EXEMPT:
                        found.append((length, f"{path}:{first} fn {name}: {length} lines"))
                if test_depth is not None and depth == test_depth:
                    test_depth = None
    return found


def sources(roots):
    for root in roots:
        if os.path.isfile(root):
            yield root
            continue
        for directory, subdirs, files in os.walk(root):
            subdirs[:] = [d for d in subdirs if d not in ("target", "tests")]
            for name in sorted(files):
                if name.endswith(".rs"):
                    yield os.path.join(directory, name)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    offenders = []
    for path in sources(sys.argv[1:]):
        if os.path.basename(path) == "tests.rs":
            continue
        count = sum(1 for _ in open(path, encoding="utf-8"))
        if count > MAX_FILE:
            offenders.append((count, f"{path}: {count} lines (at most {MAX_FILE})"))
        offenders += long_functions(path)
    for _, text in sorted(offenders, reverse=True):
        print(text)
    if offenders:
        sys.exit(1)
    print(f"ok: no file over {MAX_FILE} lines, no function over {MAX_FN}")


if __name__ == "__main__":
    main()
