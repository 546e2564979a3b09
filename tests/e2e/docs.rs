//! The user-facing documents say what issue 13 asks of them: the README has
//! the install step, the timings of its two commands, a first upload and
//! what the server's defaults mean; docs/BENCHMARKS.md opens with one screen
//! of current figures, the machine and the command that reproduces them.

use std::path::Path;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn readme_has_install_first_upload_and_the_defaults() {
    let r = read("README.md");
    for want in [
        "cargo install --path cli --locked",
        "## First upload in one minute",
        "bigtransfer server --dir",
        "bigtransfer client --host 192.168.1.20:8080",
        "*every interface*",
        "*no token*",
        "*plaintext*",
        "dist/bigtransfer.service",
        "--metrics",
    ] {
        assert!(r.contains(want), "README.md lacks {want:?}");
    }
    assert!(
        !r.contains("TESTS_TIME"),
        "README.md still has the placeholder for the test time"
    );
    let timings = r
        .find("How long they take")
        .expect("the timings of the two commands");
    assert!(
        r[timings..timings + 400].contains(" s "),
        "{}",
        &r[timings..timings + 400]
    );
}

#[test]
fn benchmarks_open_with_one_screen_for_users() {
    let b = read("docs/BENCHMARKS.md");
    let screen: String = b.lines().take(45).collect::<Vec<_>>().join("\n");
    for want in [
        "| **bigtransfer** (TLS 1.3, the default) |",
        "plaintext",
        "socat",
        "rsync",
        "scp",
        "**The machine**",
        "bench/run.sh",
        "# Lab notebook",
    ] {
        assert!(
            screen.contains(want),
            "the first screen of BENCHMARKS.md lacks {want:?}"
        );
    }
}
