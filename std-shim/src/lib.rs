//! Drivers for the protocol cores (`nbd-core`, `rfb-core`) on `std`, with TLS from `tls-glue`.
//!
//! # Layers
//!
//! ```text
//! application  nbd::{server, catalog, backend, client, copy}   vnc::{server, client, desktop, security, sharing}
//!              services (listeners, caps, stop)                 serve (VNC + NBD from one credential set)
//! device       video (V4L2 capture, Hub)   input (HID gadget sink)   gadget (configfs)   media (LUNs, HTTP, kernel nbd)
//! session      pump::Session: one connection's core + application, Sans-IO
//! driver       pump::Pump (the step: plaintext, STARTTLS hand-over via tls_glue::Link, TLS records)
//!              io::blocking::run_blocking  |  io::tokio::run_tokio  |  io::listen (accept loops)
//! transport    io::stream::{Stream, AsyncStream}: TCP or Unix, sendfile, MSG_MORE
//! ```
//!
//! A [`pump::Pump`] runs the cores' drain order with TLS in it: the session's plaintext output
//! first, then TLS records, then input to the session until it consumes nothing, then a read; a
//! session that holds output reads nothing more, so a peer that never reads cannot make a
//! connection grow. `docs/ARCHITECTURE.md` in the repository explains the layers, the drain order
//! and where each rule lives.
//!
//! # Serving NBD from your own storage
//!
//! Implement [`nbd::backend::Backend`] (only `size` and `read_at` are required; the server
//! refuses what [`features`](nbd::backend::Backend::features) leaves out), put it in a
//! [`nbd::catalog::Catalog`], and run the session on either runtime.
//!
//! With threads and your own accept loop (what `--runtime threads` does, without the caps):
//!
//! ```
//! use std::net::TcpListener;
//! use std::sync::Arc;
//! use std_shim::io::{blocking::run_blocking, stream::Stream};
//! use std_shim::nbd::backend::Backend;
//! use std_shim::nbd::catalog::{Catalog, ExportSpec};
//! use std_shim::nbd::server::NbdServerSession;
//! use std_shim::pump::Pump;
//!
//! /// A read-only disk in which every byte holds its 4 KiB block's number (mod 256).
//! struct Blocks;
//!
//! impl Backend for Blocks {
//!     fn size(&self) -> u64 {
//!         1 << 20
//!     }
//!     fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
//!         for (i, b) in buf.iter_mut().enumerate() {
//!             *b = ((offset + i as u64) / 4096) as u8;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn serve(listener: TcpListener, catalog: &'static Catalog) -> anyhow::Result<()> {
//!     for stream in listener.incoming() {
//!         let stream = stream?;
//!         let peer = stream.peer_addr()?.to_string();
//!         std::thread::spawn(move || {
//!             let config = nbd_core::server::ServerConfig::new(catalog.exports());
//!             let session = NbdServerSession::new(catalog, config, peer)?;
//!             let rx = session.input_buffer_len();
//!             run_blocking(&mut Pump::new(session, rx, None), &mut Stream::Tcp(stream))
//!         });
//!     }
//!     Ok(())
//! }
//!
//! fn main() -> anyhow::Result<()> {
//!     let mut spec = ExportSpec::new("blocks", Arc::new(Blocks));
//!     spec.read_only = true;
//!     let catalog: &'static Catalog = Box::leak(Box::new(Catalog::new(vec![spec])?));
//!     let listener = TcpListener::bind("127.0.0.1:0")?;
//!     println!("serving nbd://{}/blocks", listener.local_addr()?);
//! #   let addr = listener.local_addr()?;
//! #   if true {
//! #       std::thread::spawn(move || serve(listener, catalog));
//! #       return check(addr);
//! #   }
//!     serve(listener, catalog)
//! }
//! # fn check(addr: std::net::SocketAddr) -> anyhow::Result<()> {
//! #     use std_shim::nbd::copy::{copy, CopyOptions, Place};
//! #     let out = std::env::temp_dir().join(format!("std-shim-doc-{}-threads", std::process::id()));
//! #     let src = Place::parse(&format!("nbd://{addr}/blocks"))?;
//! #     copy(&src, &Place::File(out.clone()), &CopyOptions::default())?;
//! #     let data = std::fs::read(&out)?;
//! #     std::fs::remove_file(&out)?;
//! #     anyhow::ensure!(data.len() == 1 << 20, "{} bytes", data.len());
//! #     anyhow::ensure!(data.iter().enumerate().all(|(i, b)| *b == (i / 4096) as u8));
//! #     Ok(())
//! # }
//! ```
//!
//! With tokio, through [`services`] (the listeners, connection caps, refusals and clean stop
//! that `kvmio nbd serve --runtime tokio` uses; `Runtime::Threads` runs the same on threads):
//!
//! ```
//! use std::sync::Arc;
//! use std_shim::io::{Endpoint, listen::ServerControl};
//! use std_shim::nbd::backend::Backend;
//! use std_shim::nbd::catalog::{Catalog, ExportSpec};
//! use std_shim::nbd::server::{self, NbdServiceOptions};
//! use std_shim::services::{self, Runtime};
//!
//! /// A read-only disk in which every byte holds its 4 KiB block's number (mod 256).
//! struct Blocks;
//!
//! impl Backend for Blocks {
//!     fn size(&self) -> u64 {
//!         1 << 20
//!     }
//!     fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
//!         for (i, b) in buf.iter_mut().enumerate() {
//!             *b = ((offset + i as u64) / 4096) as u8;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> anyhow::Result<()> {
//!     let mut spec = ExportSpec::new("blocks", Arc::new(Blocks));
//!     spec.read_only = true;
//!     let catalog: &'static Catalog = Box::leak(Box::new(Catalog::new(vec![spec])?));
//!     let options = NbdServiceOptions::new(vec![Endpoint::Tcp("127.0.0.1:0".parse()?)]);
//!     let control = Arc::new(ServerControl::default());
//!     services::stop_on_signals(&control)?; // Ctrl-C stops cleanly
//! #   let (tx, rx) = std::sync::mpsc::channel();
//! #   let c = control.clone();
//! #   let checker = std::thread::spawn(move || {
//! #       let r = check(rx.recv()?);
//! #       c.stop();
//! #       r
//! #   });
//!     let service = server::service(catalog, options);
//!     services::run(vec![service], Runtime::Tokio, control, |label, what, addrs| {
//!         println!("{label}: {what} on {}", addrs.join(", "));
//! #       tx.send(addrs[0].clone()).unwrap();
//!     })?;
//! #   checker.join().unwrap()?;
//!     Ok(())
//! }
//! # fn check(addr: String) -> anyhow::Result<()> {
//! #     use std_shim::nbd::copy::{copy, CopyOptions, Place};
//! #     let out = std::env::temp_dir().join(format!("std-shim-doc-{}-tokio", std::process::id()));
//! #     let src = Place::parse(&format!("nbd://{addr}/blocks"))?;
//! #     copy(&src, &Place::File(out.clone()), &CopyOptions::default())?;
//! #     let data = std::fs::read(&out)?;
//! #     std::fs::remove_file(&out)?;
//! #     anyhow::ensure!(data.len() == 1 << 20, "{} bytes", data.len());
//! #     anyhow::ensure!(data.iter().enumerate().all(|(i, b)| *b == (i / 4096) as u8));
//! #     Ok(())
//! # }
//! ```
//!
//! `examples/nbd_own_backend.rs` is a writable version of the same (a copy-on-write overlay over
//! the block numbers) that CI checks with `nbdinfo` and `qemu-io` on both runtimes.

pub mod gadget;
pub mod input;
pub mod io;
pub mod media;
pub mod nbd;
pub mod pump;
pub mod serve;
pub mod services;
pub mod tls;
pub mod video;
pub mod vnc;
pub mod web;
