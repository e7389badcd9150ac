//! `kvmio vnc serve` and `kvmio vnc capture`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use std_shim::io::listen::ServerControl;
use std_shim::services::{self, stop_on_signals};
use std_shim::vnc::client::{self, CaptureOptions, parse_encodings};
use std_shim::vnc::security::{VncAddr, parse_security_list, read_password_file};
use std_shim::vnc::server::{VncServiceOptions, VncShared, service_shared};
use std_shim::vnc::settings::VncSettings;

use crate::args::vnc::{VncCaptureArgs, VncServeArgs};

/// Runs `kvmio vnc serve`.
pub(crate) fn serve(a: VncServeArgs) -> Result<()> {
    let hid = crate::gadget::hid_config(&a.hid)?;
    let video = crate::gadget::video_config(&a.video)?;
    let config = VncSettings {
        security: a.security.as_deref(),
        password_file: a.password_file.as_deref(),
        plain_users: a.plain_users.as_deref(),
        image: a.image.as_deref(),
        size: &a.size,
        name: &a.name,
        hid: hid.as_ref(),
        view_password_file: a.viewers.view_password_file.as_deref(),
        plain_view_users: a.viewers.plain_view_users.as_deref(),
        share: a.viewers.share.unwrap_or_default(),
        video: video.as_ref(),
        jpeg: a.viewers.jpeg_encoder.unwrap_or_default(),
    }
    .server_config(a.tls_creds.is_some(), a.handshake_timeout)?;
    let needs_tls = config.security.iter().any(|n| n.is_x509());
    if !needs_tls && (a.tls_creds.is_some() || !a.tls_authz.is_empty()) {
        bail!("--tls-creds and --tls-authz need an X509 security type in --security");
    }
    let tls_dir = if needs_tls {
        Some(std_shim::tls::creds_dir(a.tls_creds.as_deref())?)
    } else {
        None
    };
    config.validate(tls_dir.is_some())?;
    let remote = crate::gadget::remote_tls(&a.media, a.tls_creds.as_deref(), a.tls12);
    let _media = crate::gadget::start_media(&a.media, remote)?;
    let tls_config = match &tls_dir {
        Some(dir) => Some(std_shim::tls::server_config(
            dir,
            a.tls_verify_peer.yes(),
            &a.tls_authz,
            a.tls12,
        )?),
        None => None,
    };
    let endpoints = std_shim::io::endpoints(&a.listen, None, 5900)?;
    let shared = VncShared::new(config);
    let mut all = vec![service_shared(
        shared.clone(),
        VncServiceOptions {
            endpoints,
            tls: tls_config.clone(),
            max_connections: a.max_connections,
            backlog: a.backlog,
        },
    )];
    if !a.web.vnc_websocket.is_empty() {
        all.push(std_shim::web::service(
            shared,
            std_shim::web::WebServiceOptions {
                endpoints: std_shim::io::endpoints(&a.web.vnc_websocket, None, 5700)?,
                tls: tls_config,
                web: a
                    .web
                    .web
                    .as_deref()
                    .map(std_shim::web::WebRoot::new)
                    .transpose()?,
                max_connections: a.max_connections,
                backlog: a.backlog,
            },
        )?);
    }
    let control = Arc::new(ServerControl::default());
    stop_on_signals(&control)?;
    services::run(all, a.runtime, control, |label, what, bound| {
        for b in bound {
            eprintln!("kvmio: {label} serving {what} on {b}");
        }
    })?;
    eprintln!("kvmio: stopped");
    Ok(())
}

/// Runs `kvmio vnc capture`.
pub(crate) fn capture(a: VncCaptureArgs) -> Result<()> {
    let addr = VncAddr::parse(&a.addr)?;
    let mut opts = CaptureOptions::new(a.tls_creds.clone());
    if let Some(s) = &a.security {
        opts.security = parse_security_list(s)?;
    }
    opts.password = a
        .password_file
        .as_deref()
        .map(read_password_file)
        .transpose()?;
    opts.username = a.username.clone();
    opts.encodings = parse_encodings(&a.encodings)?;
    opts.quality = a.quality;
    opts.timeout = Duration::from_secs(a.timeout.max(1));
    let c = client::capture(&addr, opts)?;
    c.image
        .save_png(&a.out)
        .with_context(|| format!("write {}", a.out.display()))?;
    println!(
        "Connected to {addr} ({}{}), desktop {:?}",
        c.security,
        c.tls
            .as_deref()
            .map(|t| format!(", TLS {t}"))
            .unwrap_or_default(),
        c.name
    );
    let rects: Vec<String> = c.rects.iter().map(|(e, n)| format!("{n} {e:?}")).collect();
    println!("Rectangles: {}", rects.join(", "));
    println!(
        "Saved {}x{} display to {}",
        c.image.width,
        c.image.height,
        a.out.display()
    );
    Ok(())
}
