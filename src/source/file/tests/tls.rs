//! `spec.tls` / `spec.backendTls` in routes files: PEM files relative to the routes file.

use super::*;

fn pem_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

fn route_doc(tls: &str) -> String {
    format!(
        "apiVersion: wsgate.io/v1alpha1\nkind: WsRoute\nmetadata:\n  name: chat\nspec:\n  upstreamHost: chat.test\n  upstreamPathTemplate: /chat\n  downstreamPathTemplate: /chat\n  downstreamHostAndPorts:\n    - host: 10.0.0.1\n      port: 80\n{tls}"
    )
}

fn load_in(dir: &Path, text: &str) -> LoadedRoutes {
    let path = dir.join("routes.yaml");
    std::fs::write(&path, text).unwrap();
    load(&[path]).unwrap()
}

/// Certificate, key and CA files named relative to the routes file are read into the route
/// and listed for the watcher.
#[test]
fn tls_files_relative_to_the_routes_file_are_loaded_and_watched() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pem_pair("chat.test");
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/chat.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("tls/chat.key"), &key).unwrap();
    std::fs::write(dir.path().join("tls/ca.crt"), &cert).unwrap();
    let loaded = load_in(
        dir.path(),
        &route_doc("  tls:\n    certFile: tls/chat.crt\n    keyFile: tls/chat.key\n  backendTls:\n    caFile: tls/ca.crt\n"),
    );
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let route = &loaded.routes[0];
    assert!(route.certificate.is_some());
    assert!(route.backend_tls.ca.is_some());
    assert_eq!(
        loaded.tls_files,
        vec![
            dir.path().join("tls/chat.crt"),
            dir.path().join("tls/chat.key"),
            dir.path().join("tls/ca.crt")
        ]
    );
}

/// Unreadable or mismatched files and cluster-only references are errors naming the field;
/// the route is left out (and a reload with them is refused).
#[test]
fn bad_tls_references_are_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = pem_pair("chat.test");
    let (_, other_key) = pem_pair("other.test");
    std::fs::write(dir.path().join("chat.crt"), &cert).unwrap();
    std::fs::write(dir.path().join("other.key"), &other_key).unwrap();
    for (tls, field, words) in [
        (
            "  tls:\n    certFile: missing.crt\n    keyFile: other.key\n",
            "spec.tls.certFile",
            "cannot read",
        ),
        (
            "  tls:\n    certFile: chat.crt\n    keyFile: other.key\n",
            "spec.tls.certFile",
            "does not belong",
        ),
        (
            "  tls:\n    certFile: chat.crt\n",
            "spec.tls.keyFile",
            "required",
        ),
        (
            "  tls:\n    secretName: chat-tls\n",
            "spec.tls.secretName",
            "need a cluster",
        ),
        (
            "  backendTls:\n    caSecretName: ca\n",
            "spec.backendTls.caSecretName",
            "need a cluster",
        ),
    ] {
        let loaded = load_in(dir.path(), &route_doc(tls));
        assert!(loaded.routes.is_empty(), "{tls}");
        let p = loaded
            .problems
            .iter()
            .find(|p| p.field == field)
            .unwrap_or_else(|| panic!("{tls}: {:?}", loaded.problems));
        assert!(p.is_error() && p.message.contains(words), "{tls}: {p}");
        assert!(
            !p.message.contains("PRIVATE KEY"),
            "never quotes key material"
        );
    }
}

/// The dangerous flag loads the route with a warning saying what it costs.
#[test]
fn dangerous_flag_loads_with_a_warning() {
    let loaded = load_str(
        "routes.yaml",
        &route_doc(
            "  downstreamScheme: wss\n  dangerousAcceptAnyServerCertificateValidator: true\n",
        ),
    );
    assert_eq!(loaded.routes.len(), 1);
    assert_eq!(
        summary(&loaded),
        vec![(
            Severity::Warning,
            Some(1),
            "spec.dangerousAcceptAnyServerCertificateValidator"
        )]
    );
}
