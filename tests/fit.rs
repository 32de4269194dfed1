//! Everyday fit: `cairn --version`, shell completions, manual pages and `scripts/install`,
//! checked against the subcommands the real binary's `--help` lists, so a new subcommand
//! without a page or a completion fails here.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every subcommand, nested ones included, as its path of names (`["key", "add"]`), read from
/// the `Commands:` sections of `cairn … --help` (clap's own list; `help` left out).
fn subcommands() -> Vec<Vec<String>> {
    fn walk(path: &[String], all: &mut Vec<Vec<String>>) {
        let help = ok(Command::new(bin()).args(path).arg("--help"), 0);
        let mut lines = help.lines().skip_while(|l| *l != "Commands:").skip(1);
        let mut names = Vec::new();
        for line in lines.by_ref().take_while(|l| !l.trim().is_empty()) {
            // "  name   description"; a wrapped description continues further right.
            if let Some(rest) = line.strip_prefix("  ") {
                if !rest.starts_with(' ') {
                    names.push(rest.split_whitespace().next().unwrap().to_string());
                }
            }
        }
        for name in names.into_iter().filter(|n| n != "help") {
            let mut sub = path.to_vec();
            sub.push(name);
            all.push(sub.clone());
            walk(&sub, all);
        }
    }
    let mut all = Vec::new();
    walk(&[], &mut all);
    all
}

fn tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn expected_version() -> String {
    use cairn_repo::sync::proto::{MIN_VERSION, SYNC_VERSION, VERSION};
    let served = if MIN_VERSION == VERSION {
        VERSION.to_string()
    } else {
        format!("{MIN_VERSION}-{VERSION}")
    };
    format!(
        "cairn {} (repository format {}, redb layout {}, protocol {VERSION}: sync {SYNC_VERSION}, store {VERSION}; serves protocol {served})",
        env!("CARGO_PKG_VERSION"),
        cairn_repo::format::CONFIG_VERSION,
        cairn_repo::storage::REDB_LAYOUT_VERSION,
    )
}

#[test]
fn subcommand_list_is_read_from_help() {
    let subs = subcommands();
    for want in [
        vec!["init"],
        vec!["backup"],
        vec!["key"],
        vec!["key", "add"],
        vec!["target", "add"],
        vec!["completions"],
        vec!["man"],
    ] {
        assert!(
            subs.iter().any(|s| s == &want),
            "{want:?} not among {subs:?}"
        );
    }
}

#[test]
fn version_names_repository_format_and_sync_protocols() {
    for flag in ["--version", "-V"] {
        let out = ok(Command::new(bin()).arg(flag), 0);
        assert_eq!(out.trim_end(), expected_version(), "cairn {flag}");
    }
    assert!(expected_version().contains(&format!(
        "repository format {}",
        cairn_repo::format::CONFIG_VERSION
    )));
}

/// Run bash's completion for the words typed so far (the last one being completed) with the
/// script `script` loaded, returning the candidates.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        r#"source "$1"
spec=$(complete -p cairn) || exit 7
func=$(printf '%s\n' "$spec" | sed -n 's/.*-F \([^ ]*\).*/\1/p')
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
"$func" cairn "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        words = quoted.join(" "),
    );
    let out = ok(
        Command::new("bash")
            .arg("--norc")
            .arg("-c")
            .arg(program)
            .arg("bash")
            .arg(script),
        0,
    );
    out.lines().map(|l| l.trim().to_string()).collect()
}

/// Bash completes every subcommand name (at its level); zsh and fish scripts name each one
/// and, where the shell is installed, parse.
fn check_completions(bash: &Path, zsh: &Path, fish: &Path) {
    let subs = subcommands();
    for sub in &subs {
        let (last, parents) = sub.split_last().unwrap();
        let mut words = vec!["cairn"];
        words.extend(parents.iter().map(String::as_str));
        words.push("");
        let got = bash_complete(bash, &words);
        assert!(
            got.contains(last),
            "bash does not complete `{}` after {words:?}: {got:?}",
            sub.join(" ")
        );
        // Typing a prefix narrows it down to names starting with it.
        let mut prefixed = words.clone();
        *prefixed.last_mut().unwrap() = &last[..1];
        let got = bash_complete(bash, &prefixed);
        assert!(got.contains(last), "{prefixed:?}: {got:?}");
        assert!(got.iter().all(|c| c.starts_with(&last[..1])), "{got:?}");
    }
    // Options and values complete too.
    assert!(bash_complete(bash, &["cairn", "backup", "--exc"]).contains(&"--exclude".to_string()));
    let shells = bash_complete(bash, &["cairn", "completions", ""]);
    for s in ["bash", "zsh", "fish"] {
        assert!(shells.contains(&s.to_string()), "{shells:?}");
    }

    let zsh_text = std::fs::read_to_string(zsh).unwrap();
    let fish_text = std::fs::read_to_string(fish).unwrap();
    assert!(zsh_text.starts_with("#compdef cairn"), "{zsh_text:.200}");
    for sub in &subs {
        let (last, parents) = sub.split_last().unwrap();
        // zsh: `'add:Add another password …'` in the list of its parent's commands.
        assert!(
            zsh_text.contains(&format!("'{last}:")),
            "zsh script lacks `{}`",
            sub.join(" ")
        );
        // fish: `complete -c cairn -n "__fish_cairn_using_subcommand key; …" -f -a "add"`.
        let needle = format!("-a \"{last}\"");
        let at_level = fish_text.lines().any(|l| {
            l.contains(&needle)
                && parents
                    .last()
                    .is_none_or(|p| l.contains(&format!("__fish_cairn_using_subcommand {p}")))
        });
        assert!(at_level, "fish script lacks `{}`", sub.join(" "));
    }
    // fish, when installed, really completes every subcommand too.
    if tool("fish") {
        for sub in &subs {
            let (last, parents) = sub.split_last().unwrap();
            let line = format!(
                "cairn {}",
                parents.iter().map(|p| format!("{p} ")).collect::<String>()
            );
            let out = ok(
                Command::new("fish")
                    .arg("--no-config")
                    .arg("-c")
                    .arg("source $argv[1]; complete -C $argv[2]")
                    .arg(fish)
                    .arg(&line),
                0,
            );
            assert!(
                out.lines()
                    .any(|l| l.split('\t').next() == Some(last.as_str())),
                "fish does not complete `{}` after `{line}`: {out}",
                sub.join(" ")
            );
        }
    }
    for (shell, script) in [("bash", bash), ("zsh", zsh), ("fish", fish)] {
        if tool(shell) {
            let out = Command::new(shell).arg("-n").arg(script).output().unwrap();
            assert!(
                out.status.success(),
                "{shell} -n {}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "completions {shell}");
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.len() > 1000, "completions {shell}: too short");
        let p = dir.path().join(shell);
        std::fs::write(&p, &out.stdout).unwrap();
        paths.push(p);
    }
    check_completions(&paths[0], &paths[1], &paths[2]);
    // An unknown shell is a usage error.
    let r = run(Command::new(bin()).args(["completions", "cmd.exe"]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    // A closed pipe is not an error.
    let r = run(Command::new("bash").arg("-c").arg(format!(
        "set -o pipefail; '{}' completions bash | head -c 10 >/dev/null",
        bin().display()
    )));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The page file each subcommand must have: `cairn-key-add.1`.
fn page_names() -> BTreeSet<String> {
    let mut want: BTreeSet<String> = subcommands()
        .iter()
        .map(|s| format!("cairn-{}.1", s.join("-")))
        .collect();
    want.insert("cairn.1".to_string());
    want
}

/// Render a page as `man` would, failing on any formatter warning; returns the text.
fn render(page: &Path) -> String {
    let out = if tool("man") {
        Command::new("man")
            .args(["--warnings", "-l"])
            .arg(page)
            .env("MANWIDTH", "200")
            .env("MAN_DISABLE_SECCOMP", "1")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("MANPAGER")
            .env_remove("PAGER")
            .output()
            .unwrap()
    } else if tool("groff") {
        Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-rLL=200n"])
            .arg(page)
            .output()
            .unwrap()
    } else {
        panic!("neither man nor groff is installed; scripts/test installs man-db");
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "{} does not render cleanly: {stderr}",
        page.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every page is there (and nothing else), renders without warnings, and shows its command's
/// name, synopsis and options.
fn check_pages(dir: &Path) {
    let have: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want = page_names();
    assert_eq!(
        have,
        want,
        "pages missing: {:?}; pages for no subcommand: {:?}",
        want.difference(&have).collect::<Vec<_>>(),
        have.difference(&want).collect::<Vec<_>>()
    );
    for name in &want {
        let text = render(&dir.join(name));
        let command = name.trim_end_matches(".1");
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"] {
            assert!(
                text.lines().any(|l| l.trim() == section),
                "{name}: no {section} section:\n{text}"
            );
        }
        // Justified text has runs of spaces.
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(text.contains(&format!("{command} - ")), "{name}:\n{text}");
        assert!(text.contains("--repo"), "{name}: global options missing");
        assert!(
            text.contains(&format!(
                "repository format {}",
                cairn_repo::format::CONFIG_VERSION
            )),
            "{name}: no version in the footer:\n{text}"
        );
    }
    let top = render(&dir.join("cairn.1"));
    for sub in subcommands().iter().filter(|s| s.len() == 1) {
        assert!(
            top.contains(&format!("cairn-{}(1)", sub[0])),
            "cairn.1 does not point to cairn-{}(1)",
            sub[0]
        );
    }
    let key_add = render(&dir.join("cairn-key-add.1"));
    assert!(key_add.contains("--new-password-file"), "{key_add}");
}

#[test]
fn man_writes_a_valid_page_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("new/man1");
    let out = ok(Command::new(bin()).arg("man").arg(&pages), 0);
    assert!(
        out.contains(&format!("wrote {} manual pages", page_names().len())),
        "{out}"
    );
    check_pages(&pages);
    // Again into the same directory: replaced, same set; --json lists them.
    let out = ok(Command::new(bin()).args(["man", "--json"]).arg(&pages), 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["pages"].as_array().unwrap().len(), page_names().len());
    check_pages(&pages);
    // Nowhere to write: an error naming the path, exit 1.
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let r = run(Command::new(bin()).arg("man").arg(&file));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&*file.to_string_lossy()), "{}", r.stderr);
}

fn install_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install")
}

#[test]
fn install_script_installs_binary_pages_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    let out = ok(
        Command::new(install_script())
            .arg("--prefix")
            .arg(&prefix)
            .arg("--binary")
            .arg(bin()),
        0,
    );
    assert!(out.contains(&expected_version()), "{out}");

    let installed = prefix.join("bin/cairn");
    let version = ok(Command::new(&installed).arg("--version"), 0);
    assert_eq!(version.trim_end(), expected_version());

    let man = prefix.join("share/man");
    check_pages(&man.join("man1"));
    // `man` finds them by name under the prefix.
    if tool("man") {
        let r = run(Command::new("man")
            .arg("-M")
            .arg(&man)
            .arg("cairn-key-add")
            .env("MANWIDTH", "100")
            .env("MAN_DISABLE_SECCOMP", "1")
            .env_remove("MANPAGER")
            .env_remove("PAGER"));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("cairn-key-add"), "{}", r.stdout);
    }

    let share = prefix.join("share");
    check_completions(
        &share.join("bash-completion/completions/cairn"),
        &share.join("zsh/site-functions/_cairn"),
        &share.join("fish/vendor_completions.d/cairn.fish"),
    );

    // Installing again over the same prefix (an upgrade) works, and a stale page of a
    // subcommand that no longer exists is removed.
    std::fs::write(man.join("man1/cairn-gone.1"), ".TH x 1\n").unwrap();
    ok(
        Command::new(install_script())
            .arg(format!("--prefix={}", prefix.display()))
            .arg(format!("--binary={}", bin().display())),
        0,
    );
    check_pages(&man.join("man1"));

    // DESTDIR puts everything under it.
    let dest = dir.path().join("dest");
    ok(
        Command::new(install_script())
            .args(["--prefix", "/opt/cairn", "--binary"])
            .arg(bin())
            .env("DESTDIR", &dest),
        0,
    );
    ok(
        Command::new(dest.join("opt/cairn/bin/cairn")).arg("--version"),
        0,
    );
    assert!(dest
        .join("opt/cairn/share/bash-completion/completions/cairn")
        .is_file());

    // A relative --prefix is taken from the directory the script is run in.
    ok(
        Command::new(install_script())
            .current_dir(dir.path())
            .args(["--prefix", "rel", "--binary"])
            .arg(bin()),
        0,
    );
    assert!(dir.path().join("rel/bin/cairn").is_file());
    assert!(dir.path().join("rel/share/man/man1/cairn.1").is_file());

    let r = run(Command::new(install_script()).arg("--bogus"));
    assert_eq!(r.code, 2, "{}", r.stderr);
}
