use super::*;

/// Route order follows files, then documents; ids of same-named files use the full path.
#[test]
fn order_spans_files_and_same_names_get_paths() {
    let yaml = std::fs::read("tests/fixtures/routes/good.yaml").unwrap();
    let json = std::fs::read("tests/fixtures/routes/ocelot.json").unwrap();
    let loaded = parse_files(vec![
        (PathBuf::from("a/routes.yaml"), Ok(yaml.clone())),
        (PathBuf::from("ocelot.json"), Ok(json)),
        (PathBuf::from("b/routes.yaml"), Ok(yaml)),
    ])
    .unwrap();
    assert_eq!(
        ids(&loaded),
        [
            "a/routes.yaml#1 (chat)",
            "a/routes.yaml#2 (news)",
            "ocelot.json#Routes[0]",
            "ocelot.json#Routes[1]",
            "b/routes.yaml#1 (chat)",
            "b/routes.yaml#2 (news)",
        ]
    );
    assert!(loaded.routes.windows(2).all(|w| w[0].order < w[1].order));
}

/// An unreadable file fails the whole load, naming the path.
#[test]
fn unreadable_file_fails_the_load() {
    let missing = fixture("does-not-exist.yaml");
    let err = load(&[fixture("good.yaml"), missing.clone()]).unwrap_err();
    assert!(
        matches!(&err, FileError::Read { path, .. } if *path == missing),
        "{err}"
    );
    assert!(err.to_string().contains("does-not-exist.yaml"));
}

/// Non-UTF-8 content and an empty path list are file errors too.
#[test]
fn non_utf8_and_no_files_are_errors() {
    let err = parse_files(vec![(PathBuf::from("x.yaml"), Ok(vec![b'a', 0xff]))]).unwrap_err();
    assert!(matches!(err, FileError::NotUtf8 { offset: 1, .. }));
    assert!(matches!(load(&[]), Err(FileError::NoFiles)));
}

/// A file without any route is worth a warning (wrong file given?).
#[test]
fn empty_file_warns() {
    let loaded = load_str("routes.yaml", "# nothing yet\n");
    assert_eq!(summary(&loaded), [(Severity::Warning, None, "")]);
    assert!(!loaded.has_errors());
}
