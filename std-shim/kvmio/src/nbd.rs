//! `kvmio nbd serve|info|ping|list|copy`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nbd_core::client::Goal;
use nbd_core::wire::TransmissionFlags;
use std_shim::io::listen::ServerControl;
use std_shim::io::parse_size;
use std_shim::nbd::catalog::{Catalog, parse_export_args};
use std_shim::nbd::client::{self as nbd_client, InfoApp, ListApp};
use std_shim::nbd::copy::{self, CopyOptions, Place, Progress};
use std_shim::nbd::server::{NbdServiceOptions, service};
use std_shim::nbd::uri::NbdUri;
use std_shim::services::{self, stop_on_signals};
use std_shim::tls::TlsPolicy;

use crate::args::nbd::{ClientTlsArgs, CopyArgs, NbdServeArgs};
use crate::progress::Bars;

/// Runs `kvmio nbd serve`.
pub(crate) fn serve(a: NbdServeArgs) -> Result<()> {
    let (files, memory) = parse_export_args(&a.exports, &a.memory)?;
    let remote = std_shim::nbd::client::ClientTls {
        creds: a.remote_tls_creds.clone().or(a.tls_creds.clone()),
        tls12: a.tls12,
    };
    let catalog = Catalog::build(&files, &memory, a.read_only, 64 << 20, &remote)?;
    let endpoints = std_shim::io::endpoints(&a.listen, a.unix.as_deref(), 10809)?;
    let tls = if a.tls == TlsPolicy::Off {
        if a.tls_creds.is_some() || !a.tls_authz.is_empty() {
            bail!("--tls-creds and --tls-authz need --tls on or --tls require");
        }
        None
    } else {
        let dir = std_shim::tls::creds_dir(a.tls_creds.as_deref())?;
        Some(std_shim::tls::server_config(
            &dir,
            a.tls_verify_peer.yes(),
            &a.tls_authz,
            a.tls12,
        )?)
    };
    let mut options = NbdServiceOptions::new(endpoints);
    options.tls_mode = a.tls.nbd_mode();
    options.tls = tls;
    options.handshake_timeout =
        (a.handshake_timeout > 0).then(|| Duration::from_secs(a.handshake_timeout));
    options.max_connections = a.max_connections;
    options.backlog = a.backlog;
    let service = service(catalog, options);
    let control = Arc::new(ServerControl::default());
    stop_on_signals(&control)?;
    services::run(vec![service], a.runtime, control, |_, _, bound| {
        for b in bound {
            for s in catalog.specs() {
                eprintln!(
                    "kvmio: serving {:?} ({} bytes) on {b}",
                    s.name,
                    s.backend.size()
                );
            }
        }
    })?;
    catalog.flush_all();
    eprintln!("kvmio: stopped");
    Ok(())
}

/// `n` in the largest binary unit that divides it (`64M`).
fn human(n: u64) -> String {
    let units = ["", "K", "M", "G", "T"];
    let mut u = 0;
    let mut v = n;
    while v >= 1024 && v.is_multiple_of(1024) && u < units.len() - 1 {
        v /= 1024;
        u += 1;
    }
    format!("{v}{}", units[u])
}

/// Runs `kvmio nbd info`.
pub(crate) fn info(uri: &str, json: bool, tls: &ClientTlsArgs) -> Result<()> {
    let uri = NbdUri::parse(uri)?;
    let info = nbd_client::run(&uri, &tls.get(), Goal::Go, InfoApp::default())?;
    if json {
        let f = info.transmission_flags();
        let v = serde_json::json!({
            "protocol": format!("newstyle-fixed, {} replies", info.protocol),
            "TLS": info.tls,
            "export-name": info.name.clone().unwrap_or(uri.export.clone()),
            "description": info.description,
            "export-size": info.size,
            "contexts": info.contexts,
            "is_read_only": f.contains(TransmissionFlags::READ_ONLY),
            "is_rotational": f.contains(TransmissionFlags::ROTATIONAL),
            "can_flush": f.contains(TransmissionFlags::SEND_FLUSH),
            "can_fua": f.contains(TransmissionFlags::SEND_FUA),
            "can_trim": f.contains(TransmissionFlags::SEND_TRIM),
            "can_zero": f.contains(TransmissionFlags::SEND_WRITE_ZEROES),
            "can_fast_zero": f.contains(TransmissionFlags::SEND_FAST_ZERO),
            "can_df": f.contains(TransmissionFlags::SEND_DF),
            "can_multi_conn": f.contains(TransmissionFlags::CAN_MULTI_CONN),
            "can_cache": f.contains(TransmissionFlags::SEND_CACHE),
            "block_size_minimum": info.block_size.map(|b| b.0),
            "block_size_preferred": info.block_size.map(|b| b.1),
            "block_size_maximum": info.block_size.map(|b| b.2),
        });
        say!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let f = info.transmission_flags();
    say!(
        "protocol: newstyle-fixed {} TLS, using {} replies",
        if info.tls { "with" } else { "without" },
        info.protocol
    );
    say!(
        "export={:?}:",
        info.name.clone().unwrap_or(uri.export.clone())
    );
    if let Some(d) = info.description.as_ref().filter(|d| !d.is_empty()) {
        say!("\tdescription: {d}");
    }
    say!("\texport-size: {} ({})", info.size, human(info.size));
    say!("\turi: {uri}");
    if !info.contexts.is_empty() {
        say!("\tcontexts:");
        for c in &info.contexts {
            say!("\t\t{c}");
        }
    }
    for (name, flag) in [
        ("is_read_only", TransmissionFlags::READ_ONLY),
        ("is_rotational", TransmissionFlags::ROTATIONAL),
        ("can_cache", TransmissionFlags::SEND_CACHE),
        ("can_df", TransmissionFlags::SEND_DF),
        ("can_fast_zero", TransmissionFlags::SEND_FAST_ZERO),
        ("can_flush", TransmissionFlags::SEND_FLUSH),
        ("can_fua", TransmissionFlags::SEND_FUA),
        ("can_multi_conn", TransmissionFlags::CAN_MULTI_CONN),
        ("can_trim", TransmissionFlags::SEND_TRIM),
        ("can_zero", TransmissionFlags::SEND_WRITE_ZEROES),
    ] {
        say!("\t{name}: {}", f.contains(flag));
    }
    if let Some((min, pref, max)) = info.block_size {
        say!("\tblock_size_minimum: {min}");
        say!("\tblock_size_preferred: {pref}");
        say!("\tblock_size_maximum: {max}");
    }
    Ok(())
}

/// Runs `kvmio nbd ping`.
pub(crate) fn ping(uri: &str, count: u32, tls: &ClientTlsArgs) -> Result<()> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let uri = NbdUri::parse(uri)?;
    let tls = tls.get();
    // Credentials are loaded once; each connection makes its own TLS session.
    let starter_tls = tls.clone();
    let mut times = Vec::with_capacity(count as usize);
    let all = std::time::Instant::now();
    for _ in 0..count {
        let t = std::time::Instant::now();
        let info = nbd_client::run(&uri, &starter_tls, Goal::Go, InfoApp::default())?;
        times.push(t.elapsed());
        if info.size == 0 && info.flags == 0 {
            bail!("no export information");
        }
    }
    let total = all.elapsed();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    say!(
        "{count} connections to {uri} in {:.3} s: {:.1}/s, min {:.2} ms, median {:.2} ms, max {:.2} ms",
        total.as_secs_f64(),
        f64::from(count) / total.as_secs_f64(),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

/// Runs `kvmio nbd list`.
pub(crate) fn list(uri: &str, tls: &ClientTlsArgs) -> Result<()> {
    let uri = NbdUri::parse(uri)?;
    let list = nbd_client::run(&uri, &tls.get(), Goal::List, ListApp::default())?;
    for (name, desc) in list.exports {
        if desc.is_empty() {
            say!("{name}");
        } else {
            say!("{name}\t{desc}");
        }
    }
    Ok(())
}

/// Runs `kvmio nbd copy`.
pub(crate) fn copy(a: CopyArgs) -> Result<()> {
    let show = !a.no_progress && (a.progress || std::io::stderr().is_terminal());
    let opts = CopyOptions {
        connections: a.connections,
        request_size: u32::try_from(parse_size(&a.request_size)?)
            .context("request size over 4 GiB")?,
        tls: a.tls.get(),
        progress: show.then(|| Arc::new(Bars) as Arc<dyn Progress>),
    };
    copy::copy(&Place::parse(&a.src)?, &Place::parse(&a.dst)?, &opts).map(|_| ())
}
