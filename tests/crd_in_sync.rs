//! The committed CRD manifests are generated from the Rust types; this test fails when they
//! drift. `WSGATE_BLESS=1 cargo test --test crd_in_sync` rewrites them.

use std::path::Path;

const COPIES: [&str; 2] = ["crds/wsroute.yaml", "charts/wsgate/crds/wsroute.yaml"];

/// Every committed copy of the CRD equals `wsgate::api::crd_yaml()`.
#[test]
fn committed_crd_manifests_match_the_types() {
    let want = wsgate::api::crd_yaml();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("WSGATE_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for copy in COPIES {
        let path = root.join(copy);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have == want {
            continue;
        }
        if bless {
            std::fs::create_dir_all(path.parent().expect("copy paths have a parent"))
                .expect("create CRD directory");
            std::fs::write(&path, &want).expect("write CRD");
        } else {
            stale.push(copy);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from `wsgate crd`; run `WSGATE_BLESS=1 cargo test --test crd_in_sync`"
    );
}
