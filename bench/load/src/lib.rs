//! Load for kvmio's servers (and the peers it is measured against): bursts of NBD clients
//! that each check their data, thousands of connections held open while a new client is
//! served, and bursts of VNC clients that are served or told why not.
//!
//! Used by `bench/` scripts through the `kvmio-load` binary, and by the tests in `tests/`.

pub mod nbd;
pub mod vnc;

/// Raises this process's open-file limit to its hard limit (each client needs a descriptor);
/// returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    std_shim::io::listen::raise_nofile_limit()
}
