//! Any NBD [`Backend`] as a kernel block device (`/dev/nbdN`), so that the USB mass-storage
//! gadget (which takes a file or block device) can present it to the target.
//!
//! What `nbd-client` does, in-process: a Unix socket pair; on one end kvmio's own NBD server
//! session serves the backend; on the other the fixed-newstyle negotiation is done here
//! (`NBD_OPT_EXPORT_NAME`, so no structured replies, which the kernel does not speak), then
//! the socket is handed to the kernel with `NBD_SET_SOCK` and `NBD_DO_IT` runs the transmission
//! phase in a thread until [`KernelNbd::detach`] (or the server's end) disconnects it. The
//! kernel asks with a timeout, so a backend that stalls gives the target I/O errors.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};

use crate::io::blocking::run_blocking;
use crate::io::stream::Stream;
use crate::nbd::backend::Backend;
use crate::nbd::catalog::{Catalog, ExportSpec};
use crate::nbd::server::NbdServerSession;
use crate::pump::Pump;

// <linux/nbd.h>: _IO(0xab, n)
const NBD_SET_SOCK: libc::c_ulong = 0xab00;
const NBD_SET_BLKSIZE: libc::c_ulong = 0xab01;
const NBD_SET_SIZE: libc::c_ulong = 0xab02;
const NBD_DO_IT: libc::c_ulong = 0xab03;
const NBD_CLEAR_SOCK: libc::c_ulong = 0xab04;
const NBD_CLEAR_QUE: libc::c_ulong = 0xab05;
const NBD_DISCONNECT: libc::c_ulong = 0xab08;
const NBD_SET_TIMEOUT: libc::c_ulong = 0xab09;
const NBD_SET_FLAGS: libc::c_ulong = 0xab0a;

/// Seconds the kernel waits for a reply before it fails the request.
pub const REQUEST_TIMEOUT: u64 = 30;

const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_EXPORT_NAME: u32 = 1;

fn ioctl(f: &File, op: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the nbd ioctls used here take an integer argument (a descriptor, a size, a flag
    // word), not a pointer; the descriptor is valid for the call (the File is borrowed).
    let r = unsafe { libc::ioctl(f.as_raw_fd(), op, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A backend attached to `/dev/nbdN`; [`detach`](Self::detach) (or drop) disconnects it.
pub struct KernelNbd {
    dev: PathBuf,
    ctl: File,
    do_it: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
}

/// The first `/dev/nbdN` not in use (no `pid` in sysfs).
pub fn free_device() -> Result<PathBuf> {
    if !Path::new("/sys/block/nbd0").exists() {
        // The module may just not be loaded yet.
        let _ = std::process::Command::new("modprobe")
            .arg("nbd")
            .stderr(std::process::Stdio::null())
            .status();
    }
    for i in 0..256 {
        let sys = PathBuf::from(format!("/sys/block/nbd{i}"));
        if !sys.exists() {
            break;
        }
        if !sys.join("pid").exists() {
            return Ok(PathBuf::from(format!("/dev/nbd{i}")));
        }
    }
    bail!("no free /dev/nbdN: load the nbd module (modprobe nbd nbds_max=16)")
}

impl KernelNbd {
    /// Serves `backend` (read-only if `read_only`) on a free `/dev/nbdN`.
    pub fn attach(backend: Arc<dyn Backend>, read_only: bool, what: &str) -> Result<Self> {
        let dev = free_device()?;
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .with_context(|| format!("{}", dev.display()))?;
        let (mut ours, theirs) = UnixStream::pair().context("socketpair")?;
        let label = format!("{} ({what})", dev.display());
        let server = {
            let label = label.clone();
            std::thread::Builder::new()
                .name("media-nbd".into())
                .spawn(move || {
                    let mut spec = ExportSpec::new("media", backend);
                    spec.read_only = read_only;
                    let run = || -> Result<()> {
                        let catalog = Catalog::new(vec![spec])?;
                        let config = nbd_core::server::ServerConfig::new(catalog.exports());
                        let session = NbdServerSession::new(&catalog, config, label.clone())?;
                        let rx = session.input_buffer_len();
                        run_blocking(&mut Pump::new(session, rx, None), &mut Stream::Unix(theirs))
                    };
                    if let Err(e) = run() {
                        log::warn!("{label}: {e:#}");
                    }
                })?
        };
        let (size, flags) = negotiate(&mut ours).context("negotiating with the media server")?;
        setup(&ctl, &ours, size, flags).with_context(|| format!("setting up {}", dev.display()))?;
        let do_it = {
            let f = ctl.try_clone()?;
            let label = label.clone();
            std::thread::Builder::new()
                .name("media-nbd-do-it".into())
                .spawn(move || {
                    // The kernel holds its own reference to the socket from NBD_SET_SOCK on.
                    let _keep = ours;
                    match ioctl(&f, NBD_DO_IT, 0) {
                        Ok(_) => log::debug!("{label}: disconnected"),
                        Err(e) => log::info!("{label}: {e}"),
                    }
                    ioctl(&f, NBD_CLEAR_QUE, 0).ok();
                    ioctl(&f, NBD_CLEAR_SOCK, 0).ok();
                })?
        };
        // The capacity becomes visible once NBD_DO_IT has started the device: the gadget reads
        // it when the LUN opens the device.
        let sys = Path::new("/sys/block")
            .join(dev.file_name().unwrap_or_default())
            .join("size");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(&sys)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            != Some(size / 512)
        {
            if std::time::Instant::now() > deadline || do_it.is_finished() {
                ioctl(&ctl, NBD_DISCONNECT, 0).ok();
                let _ = do_it.join();
                bail!("{}: the device did not start", dev.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        log::info!("{label}: {size} bytes");
        Ok(Self {
            dev,
            ctl,
            do_it: Some(do_it),
            server: Some(server),
        })
    }

    /// The block device.
    pub fn device(&self) -> &Path {
        &self.dev
    }

    /// Disconnects the device and waits for both sides to end.
    pub fn detach(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.do_it.take() {
            ioctl(&self.ctl, NBD_DISCONNECT, 0).ok();
            let _ = t.join();
        }
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

impl Drop for KernelNbd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn setup(ctl: &File, sock: &UnixStream, size: u64, flags: u16) -> std::io::Result<()> {
    ioctl(ctl, NBD_CLEAR_SOCK, 0).ok();
    ioctl(ctl, NBD_SET_BLKSIZE, 512)?;
    ioctl(ctl, NBD_SET_SIZE, size as libc::c_ulong)?;
    ioctl(ctl, NBD_SET_FLAGS, libc::c_ulong::from(flags))?;
    ioctl(ctl, NBD_SET_TIMEOUT, REQUEST_TIMEOUT as libc::c_ulong)?;
    ioctl(ctl, NBD_SET_SOCK, sock.as_raw_fd() as libc::c_ulong)?;
    Ok(())
}

/// The client side of fixed-newstyle negotiation, `NBD_OPT_EXPORT_NAME "media"`: (size,
/// transmission flags).
fn negotiate(s: &mut UnixStream) -> Result<(u64, u16)> {
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello)?;
    if &hello[..8] != NBDMAGIC || &hello[8..16] != IHAVEOPT {
        bail!("not a newstyle NBD server");
    }
    let server_flags = u16::from_be_bytes([hello[16], hello[17]]);
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        bail!("the server is not fixed-newstyle");
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | if no_zeroes { FLAG_NO_ZEROES } else { 0 });
    let name = b"media";
    let mut m = Vec::new();
    m.extend_from_slice(&client_flags.to_be_bytes());
    m.extend_from_slice(IHAVEOPT);
    m.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    m.extend_from_slice(&(name.len() as u32).to_be_bytes());
    m.extend_from_slice(name);
    s.write_all(&m)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if !no_zeroes {
        let mut zeroes = [0u8; 124];
        s.read_exact(&mut zeroes)?;
    }
    let size = u64::from_be_bytes(reply[..8].try_into().expect("8 bytes"));
    let flags = u16::from_be_bytes([reply[8], reply[9]]);
    Ok((size, flags))
}
