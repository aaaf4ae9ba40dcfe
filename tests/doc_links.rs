//! Relative links between the repository's Markdown files resolve: the linked file exists
//! and, for `page.md#anchor`, the page has a heading with that anchor (as GitHub makes
//! anchors). The reference moved out of the README into docs/ (issue 19); this keeps every
//! link a reader can click working when pages move again.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Directories that hold no documentation of ours (build output, caches, vendored code).
const SKIP_DIRS: &[&str] = &["target", ".git", "node_modules", "cache"];

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIP_DIRS.contains(&name) {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The lines of `text` with fenced code blocks blanked out (line numbers kept).
fn outside_fences(text: &str) -> Vec<&str> {
    let mut in_fence = false;
    text.lines()
        .map(|line| {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                ""
            } else if in_fence {
                ""
            } else {
                line
            }
        })
        .collect()
}

/// The text a reader sees as prose: code blocks and inline code spans removed, so
/// `[x](y)` inside code is not taken for a link.
fn prose_lines(text: &str) -> Vec<String> {
    outside_fences(text)
        .into_iter()
        .map(|line| line.split('`').step_by(2).collect::<Vec<_>>().concat())
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces turned into `-`; a repeated anchor gets `-1`, `-2`, ….
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    // Headings keep the text of their code spans (`The `WsRoute` resource` →
    // `the-wsroute-resource`), so only fences are left out here.
    for line in outside_fences(text) {
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let title = line[hashes..].trim().trim_end_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// Targets of the inline links `[text](target)` in `text`, with their line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (number, line) in prose_lines(text).iter().enumerate() {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after
                .find(|c: char| c == ')' || c.is_whitespace())
                .unwrap_or(after.len());
            out.push((number + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// Every broken relative link of the Markdown files under `root`, as `file:line: message`.
fn broken_links(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    markdown_files(root, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).expect("read a Markdown file");
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (line, target) in link_targets(&text) {
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a file has a parent").join(path)
            };
            if !dest.exists() {
                problems.push(format!("{shown}:{line}: `{target}`: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                if dest.extension().is_some_and(|e| e == "md") {
                    let page = fs::read_to_string(&dest).expect("read the linked page");
                    if !anchors(&page).iter().any(|a| a == anchor) {
                        problems.push(format!("{shown}:{line}: `{target}`: no such heading"));
                    }
                }
            }
        }
    }
    problems
}

/// Every relative link in the repository's Markdown resolves to a file and a heading.
#[test]
fn relative_links_in_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let problems = broken_links(root);
    assert!(
        problems.is_empty(),
        "broken links in the docs:\n{}",
        problems.join("\n")
    );
}

/// The check itself: a missing page and a missing heading are both reported, while links to
/// a heading (code, punctuation and a repeated title included), a directory, a web address
/// and a link shown inside code are not.
#[test]
fn a_missing_page_or_heading_is_reported_and_good_links_are_not() {
    let dir = tempfile::tempdir().expect("temporary directory");
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(
        dir.path().join("sub/page.md"),
        "# The `WsRoute` resource\n\n## Notes\n\n## Notes\n\n### Reloads and `wsgate check`\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("index.md"),
        "# Index\n\n\
         [ok](sub/page.md#the-wsroute-resource) [ok](sub/page.md#notes-1)\n\
         [ok](sub/page.md#reloads-and-wsgate-check) [ok](sub/) [ok](https://example.com/x.md)\n\
         [ok](#index) `[in code](nowhere.md)`\n\
         ```\n[in a block](nowhere.md)\n```\n\
         [bad](sub/missing.md) [bad](sub/page.md#no-such-heading)\n",
    )
    .unwrap();
    let problems = broken_links(dir.path());
    assert_eq!(
        problems,
        vec![
            "index.md:9: `sub/missing.md`: no such file".to_string(),
            "index.md:9: `sub/page.md#no-such-heading`: no such heading".to_string(),
        ]
    );
}
