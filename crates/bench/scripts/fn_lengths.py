#!/usr/bin/env python3
"""Lists Rust files over 1,000 lines and functions over 150 lines (signature to closing brace)."""
import re, sys, pathlib
FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+"[^"]*"\s+)?fn\s+(\w+)')
bad = 0
for root in sys.argv[1:]:
    for path in sorted(pathlib.Path(root).rglob('*.rs')):
        lines = path.read_text().splitlines()
        if len(lines) > 1000:
            print(f"{path}: {len(lines)} lines"); bad += 1
        i = 0
        while i < len(lines):
            m = FN.match(lines[i])
            if not m:
                i += 1; continue
            depth, opened, j = 0, False, i
            while j < len(lines):
                code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split('//')[0])
                code = re.sub(r"'(\\.|[^'\\])'", "''", code)
                for ch in code:
                    if ch == '{': depth += 1; opened = True
                    elif ch == '}': depth -= 1
                    elif ch == ';' and not opened and depth == 0: break
                else:
                    if opened and depth == 0: break
                    j += 1; continue
                break
            n = j - i + 1
            if n > 150:
                print(f"{path}:{i+1}: fn {m.group(7)} is {n} lines"); bad += 1
            i += 1
sys.exit(1 if bad else 0)
