//! The help of `ringcast bench`, `ringcast compare` and `scripts/loadtest.sh` against
//! their tables in docs/load-testing.md (README's map links there): every flag the help
//! lists is in the table and the other way round, and `bench`'s defaults agree.
//! (`serve`'s table, in docs/operations.md, is checked by hand: its flags change with
//! the server.) Beside them: README stays short and every link of the docs resolves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// The page of docs/ that holds the flag tables of the harness and the load-test script.
const LOAD_TESTING: &str = "docs/load-testing.md";

fn doc(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

/// The flag table that follows `heading` in a page of the docs: flag → default cell.
fn table_after(doc: &str, heading: &str) -> BTreeMap<String, String> {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("{LOAD_TESTING} has no {heading:?}"));
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in doc[start..].lines().skip(1) {
        if line.starts_with("| flag") {
            in_table = true;
            continue;
        }
        if !in_table {
            if line.starts_with("## ") || line.starts_with("### ") {
                break;
            }
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells[0].starts_with("| ---") {
            continue;
        }
        let default = cells.get(1).copied().unwrap_or("").replace('`', "");
        for flag in flags_in(cells[0]) {
            rows.insert(flag, default.clone());
        }
    }
    assert!(!rows.is_empty(), "no flag table after {heading:?}");
    rows
}

/// Every `--long-flag` in a piece of text.
fn flags_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at + 2;
        let len = text[start..]
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || *b == b'-')
            .count();
        let before_ok = i + at == 0 || !bytes[i + at - 1].is_ascii_alphanumeric();
        if len > 0 && before_ok {
            out.push(format!("--{}", &text[start..start + len]));
        }
        i = start + len;
    }
    out
}

/// The flags of a clap `--help` and their defaults.
fn help_flags(args: &[&str]) -> BTreeMap<String, Option<String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(args)
        .output()
        .expect("running ringcast --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let trimmed = line.trim_start();
        if line.starts_with("  ") && trimmed.starts_with("--") && line.len() - trimmed.len() <= 6 {
            let flag = flags_in(trimmed.split(' ').next().unwrap_or(""));
            current = flag.first().cloned();
            if let Some(f) = &current {
                flags.insert(f.clone(), None);
            }
        } else if let (Some(f), Some(rest)) = (&current, trimmed.strip_prefix("[default: ")) {
            flags.insert(f.clone(), Some(rest.trim_end_matches(']').to_string()));
        }
    }
    flags.remove("--help");
    flags.remove("--version");
    flags
}

fn same_flags(what: &str, help: &BTreeSet<String>, doc: &BTreeSet<String>) {
    let missing: Vec<_> = help.difference(doc).collect();
    let extra: Vec<_> = doc.difference(help).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: in --help but not {LOAD_TESTING}: {missing:?}; \
         in {LOAD_TESTING} but not --help: {extra:?}"
    );
}

#[test]
fn bench_help_and_docs_agree() {
    let help = help_flags(&["bench", "--help"]);
    let table = table_after(&doc(LOAD_TESTING), "## `ringcast bench` directly");
    same_flags(
        "ringcast bench",
        &help.keys().cloned().collect(),
        &table.keys().cloned().collect(),
    );
    for (flag, default) in &help {
        let doc_default = table[flag].replace(',', "");
        match default {
            Some(d) => assert_eq!(&doc_default, d, "default of {flag}"),
            None => assert!(
                ["none", "off"].contains(&doc_default.as_str()),
                "{flag} has no default in --help but {LOAD_TESTING} says {doc_default:?}"
            ),
        }
    }
}

#[test]
fn cert_help_and_docs_agree() {
    let help = help_flags(&["cert", "--help"]);
    let table = table_after(&doc(LOAD_TESTING), "## Over TLS");
    same_flags(
        "ringcast cert",
        &help.keys().cloned().collect(),
        &table.keys().cloned().collect(),
    );
}

#[test]
fn compare_help_and_docs_agree() {
    let help = help_flags(&["compare", "--help"]);
    let table = table_after(&doc(LOAD_TESTING), "## Comparing report folders");
    same_flags(
        "ringcast compare",
        &help.keys().cloned().collect(),
        &table.keys().cloned().collect(),
    );
}

#[test]
fn loadtest_help_and_docs_agree() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/loadtest.sh");
    let out = Command::new("bash")
        .args([script, "--help"])
        .output()
        .expect("running loadtest.sh --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // The usage block at the top lists every flag.
    let usage: String = help
        .lines()
        .take_while(|l| !l.starts_with("--workload"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut flags: BTreeSet<String> = flags_in(&usage).into_iter().collect();
    flags.remove("--help");
    let table = table_after(&doc(LOAD_TESTING), "## One command");
    same_flags(
        "scripts/loadtest.sh",
        &flags,
        &table.keys().cloned().collect(),
    );
}

#[test]
fn the_product_lists_only_serve_bench_compare_cert_and_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--help")
        .output()
        .expect("ringcast --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a command list")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        ["serve", "bench", "compare", "cert", "token", "help"]
    );
}

/// README stays a pitch, a quick start and a map (issue 22: at most 250 lines; detail goes
/// to docs/), and every relative link in it and in docs/*.md names a file that exists and,
/// after a `#`, a heading of that page: a section moved between pages must not leave the
/// map, or a page that cites it, pointing at nothing.
#[test]
fn readme_is_short_and_every_docs_link_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines = doc("README.md").lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; keep it at most 250 and move detail to docs/"
    );
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("listing docs/") {
        let path = entry.expect("an entry of docs/").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("reading a page of the docs");
        let dir = page.parent().expect("a page is in a folder");
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                page.clone()
            } else {
                dir.join(path)
            };
            if !dest.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
            } else if let Some(anchor) = anchor {
                let dest_text = std::fs::read_to_string(&dest).expect("reading a linked page");
                if !anchors(&dest_text).contains(anchor) {
                    broken.push(format!("{}: {target}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of the Markdown links `[text](target)` outside fenced code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
/// `-`, and `-1`, `-2`, ... after a repeated one.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        if fenced {
            continue;
        }
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}
