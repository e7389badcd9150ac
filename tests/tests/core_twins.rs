//! The two cores may not depend on each other (nor on a third crate of ours), so each carries
//! its own copy of the clock-free `Instant` and of the logging / wire-enum macros. This keeps
//! the copies from drifting apart: a fix to one must be made to both.

use std::path::Path;

fn read(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn shared_files_of_the_cores_are_identical() {
    for file in ["src/time.rs", "src/macros.rs"] {
        let nbd = read(&format!("nbd-core/{file}"));
        let rfb = read(&format!("rfb-core/{file}"));
        assert!(
            nbd == rfb,
            "nbd-core/{file} and rfb-core/{file} differ: keep the twins identical"
        );
    }
}
