//! An NBD server on std-shim with storage of your own: a 64 MiB disk in which every byte holds
//! its 4 KiB block's number (mod 256), with the client's writes kept in a copy-on-write overlay
//! of changed blocks (so at most the disk's size is ever held). std-shim's services give it
//! what `kvmio nbd serve` has: listeners with the system's backlog, a connection cap, a clean
//! stop on Ctrl-C, either runtime.
//!
//! ```text
//! cargo run -p std-shim --example nbd_own_backend -- [PORT] [tokio|threads]
//! nbdinfo nbd://127.0.0.1:PORT/blocks
//! qemu-io -f raw nbd://127.0.0.1:PORT/blocks -c 'read -P 5 20480 4096' -c 'write -P 0xab 0 100'
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};

use std_shim::io::{Endpoint, listen::ServerControl};
use std_shim::nbd::backend::Backend;
use std_shim::nbd::catalog::{Catalog, ExportSpec};
use std_shim::nbd::server::{NbdServiceOptions, service};
use std_shim::services::{self, Runtime};

const BLOCK: u64 = 4096;

/// Block numbers underneath, changed blocks on top.
struct Overlay {
    size: u64,
    changed: RwLock<HashMap<u64, Box<[u8]>>>,
}

impl Overlay {
    fn base(block: u64) -> Box<[u8]> {
        vec![block as u8; BLOCK as usize].into_boxed_slice()
    }
}

/// `len` bytes from `offset` cut at block boundaries: (block, offset in it, range in the buffer).
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, std::ops::Range<usize>)> {
    let mut done = 0;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let at = offset + done as u64;
            let within = (at % BLOCK) as usize;
            let n = (BLOCK as usize - within).min(len - done);
            done += n;
            (at / BLOCK, within, done - n..done)
        })
    })
}

impl Backend for Overlay {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let changed = self
            .changed
            .read()
            .map_err(|_| io::Error::other("poisoned"))?;
        for (block, within, range) in pieces(offset, buf.len()) {
            let n = range.len();
            match changed.get(&block) {
                Some(data) => buf[range].copy_from_slice(&data[within..within + n]),
                None => buf[range].fill(block as u8),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> io::Result<()> {
        let mut changed = self
            .changed
            .write()
            .map_err(|_| io::Error::other("poisoned"))?;
        for (block, within, range) in pieces(offset, buf.len()) {
            let data = changed.entry(block).or_insert_with(|| Self::base(block));
            data[within..within + range.len()].copy_from_slice(&buf[range]);
        }
        Ok(())
    }
    // No FLUSH or FUA: the overlay is in memory, so the default features (read and write
    // only) tell clients the truth, and the server refuses the rest.
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(10809), |a| a.parse())?;
    let runtime = match args.next().as_deref() {
        None | Some("tokio") => Runtime::Tokio,
        Some("threads") => Runtime::Threads,
        Some(other) => anyhow::bail!("runtime {other:?}: tokio or threads"),
    };
    let disk = Overlay {
        size: 64 << 20,
        changed: RwLock::new(HashMap::new()),
    };
    let mut spec = ExportSpec::new("blocks", Arc::new(disk));
    spec.description = "block numbers with a copy-on-write overlay".into();
    let catalog: &'static Catalog = Box::leak(Box::new(Catalog::new(vec![spec])?));

    let mut options = NbdServiceOptions::new(vec![Endpoint::Tcp(([127, 0, 0, 1], port).into())]);
    options.max_connections = 64;
    let control = Arc::new(ServerControl::default());
    services::stop_on_signals(&control)?;
    services::run(
        vec![service(catalog, options)],
        runtime,
        control,
        |_, what, addrs| {
            println!(
                "serving {what} on {} ({})",
                addrs.join(", "),
                runtime.name()
            )
        },
    )
}
