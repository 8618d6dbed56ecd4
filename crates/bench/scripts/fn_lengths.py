#!/usr/bin/env python3
"""Checks issue 22's size limits on Rust sources: no file over 1,000 lines, no function
over 150 lines (from its `fn` line to its closing brace), tests aside.

usage: fn_lengths.py DIR... [--top N]

Brace depth is counted on lines with comments, strings and char literals blanked out;
a function's nested functions and closures count towards it. Everything from a
`#[cfg(test)]` line on is skipped (each file keeps its tests at the end). Prints the
longest functions, then every breach; exits 1 if there is one."""
import pathlib
import re
import sys

MAX_FILE, MAX_FN = 1000, 150
FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)')


def code(line):
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"b?'(\\.|[^'\\])'", "''", line)
    return line.split('//')[0]


def functions(lines):
    """(first line, length, name) of each function outside tests."""
    i = 0
    while i < len(lines):
        if lines[i].strip() == '#[cfg(test)]':
            return
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            c = code(lines[j])
            if not opened and ';' in c and '{' not in c:
                break  # a declaration without a body (a trait's required method)
            depth += c.count('{') - c.count('}')
            opened = opened or '{' in c
            if opened and depth <= 0:
                break
            j += 1
        yield i + 1, j - i + 1, m.group(6)
        i = j + 1


def main(args):
    top = 10
    if '--top' in args:
        k = args.index('--top')
        top = int(args[k + 1])
        args = args[:k] + args[k + 2:]
    found, breaches = [], []
    for root in args:
        for path in sorted(pathlib.Path(root).rglob('*.rs')):
            lines = path.read_text().splitlines()
            if len(lines) > MAX_FILE:
                breaches.append(f"{path}: {len(lines)} lines (over {MAX_FILE})")
            for at, n, name in functions(lines):
                found.append((n, f"{path}:{at}", name))
                if n > MAX_FN:
                    breaches.append(f"{path}:{at}: fn {name} is {n} lines (over {MAX_FN})")
    found.sort(reverse=True)
    for n, where, name in found[:top]:
        print(f"{n:5}  {where}  fn {name}")
    print(f"{len(found)} functions checked; {len(breaches)} breach(es)")
    for b in breaches:
        print(b)
    return 1 if breaches else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
