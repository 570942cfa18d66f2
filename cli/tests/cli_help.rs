//! The CLI's own surface, without any cluster: completions, the man page, exit codes.

use std::process::Command;

fn swarmup(args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_swarmup"))
        .args(args)
        .env("XDG_DATA_HOME", home.path())
        .env("HOME", home.path())
        .output()
        .unwrap()
}

#[test]
fn completions_generate_for_every_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef swarmup"),
        ("fish", "complete -c swarmup"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let out = swarmup(&["completion", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell} completion lacks {marker:?}");
        assert!(
            text.contains("destroy"),
            "{shell} completion lacks subcommands"
        );
    }
    let out = swarmup(&["completion", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_man_page_renders() {
    let out = swarmup(&["man"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(".ie") || text.contains(".TH swarmup"),
        "{text}"
    );
    assert!(text.contains("create"));
}

#[test]
fn help_documents_the_exit_codes_and_they_hold() {
    let out = swarmup(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    assert_eq!(swarmup(&["--no-such-flag"]).status.code(), Some(2));
    let failed = swarmup(&["destroy", "no-such-cluster", "--yes"]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn quiet_listings_print_names_only() {
    let out = swarmup(&["ls", "-q"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let out = swarmup(&["ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("NAME"));
}

/// `scripts/lab-demo` and `scripts/test-all` stop before building with a toolchain older
/// than the workspace's rust-version (Debian 12's cargo is 1.63) and say what to do.
#[test]
fn scripts_refuse_an_old_rust_and_name_rustup() {
    let bin = tempfile::tempdir().unwrap();
    for (name, version) in [
        ("rustc", "rustc 1.63.0 (4b91a6ea7 2022-08-08)"),
        ("cargo", "cargo 1.63.0"),
    ] {
        let path = bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = format!("{}:/usr/bin:/bin", bin.path().display());
    let out = Command::new("bash")
        .arg("-c")
        .arg(". scripts/check-rust && check_rust")
        .current_dir(&root)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs Rust 1.")
            && stderr.contains("has 1.63.0")
            && stderr.contains("rustup"),
        "{stderr}"
    );
    let ok = Command::new("bash")
        .arg("-c")
        .arg(". scripts/check-rust && check_rust")
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
