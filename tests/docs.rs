//! The published docs match the code.

#[test]
fn errors_md_has_the_cause_table() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/errors.md")).unwrap();
    assert!(
        doc.contains(&baton::cause::Cause::markdown_table()),
        "docs/errors.md is out of date: run `baton causes` and paste the table"
    );
}

#[test]
fn demo_self_test_passes() {
    let port = baton::origin::refusing_addr().port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "demo",
            "--self-test",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.matches("\nok   ").count(), 8, "{stdout}");
}
