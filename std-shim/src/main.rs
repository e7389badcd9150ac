//! `kvmio`: serve and use NBD virtual media and VNC consoles, with TLS.
// Doc comments here are clap help texts (`nbd://host[:port]/…`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nbd_core::client::Goal;
use nbd_core::server::TlsMode;
use nbd_core::wire::TransmissionFlags;
use std_shim::io::listen::ServerControl;
use std_shim::io::parse_size;
use std_shim::nbd::catalog::Catalog;
use std_shim::nbd::client::{self as nbd_client, ClientTls, InfoApp, ListApp};
use std_shim::nbd::copy::{CopyOptions, Place, copy};
use std_shim::nbd::uri::NbdUri;
use std_shim::services::{self, Runtime};

/// `println!` that returns the error instead of panicking (e.g. when piped into `head`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?;
    }};
}

#[derive(Parser)]
#[command(
    name = "kvmio",
    version,
    about = "Secure remote console (VNC) and virtual media (NBD)"
)]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// NBD server and client tools.
    #[command(subcommand)]
    Nbd(NbdCommand),
    /// TLS credentials in the QEMU directory layout.
    #[command(subcommand)]
    Creds(CredsCommand),
    /// VNC server and capture client.
    #[command(subcommand)]
    Vnc(std_shim::vnc::cli::VncCommand),
    /// Serve VNC and NBD together over TLS from one set of credentials (the main job; with no
    /// arguments: development credentials, a test pattern on 127.0.0.1:5900 and a 64 MiB RAM
    /// disk on 127.0.0.1:10809).
    Serve(Box<std_shim::serve_all::ServeAllArgs>),
}

#[derive(Subcommand)]
enum NbdCommand {
    /// Serve exports over NBD (default: a 64 MiB RAM disk "disk" on 127.0.0.1:10809).
    Serve(ServeArgs),
    /// Show an export's size, flags, block sizes and metadata contexts.
    Info {
        /// nbd://host[:port]/export, nbds://…, nbd+unix:///export?socket=PATH, nbds+unix://…
        uri: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// Connect, negotiate (TLS for nbds), and disconnect, COUNT times; print the connection
    /// times (a health check, and a measure of a server's connection setup cost).
    Ping {
        /// The export's URI.
        uri: String,
        /// Connections to make, one after the other.
        #[arg(long, default_value_t = 1)]
        count: u32,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// List a server's exports.
    List {
        /// nbd://host[:port]/, nbds://…, nbd+unix:///?socket=PATH …
        uri: String,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// Copy between NBD exports, files and stdin/stdout (`-`).
    Copy {
        /// Source: an NBD URI, a file, or `-`.
        src: String,
        /// Destination: an NBD URI, a file, or `-`.
        dst: String,
        /// Most connections per NBD side (used when the server allows several).
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Request size.
        #[arg(long, default_value = "1M")]
        request_size: String,
        /// Show a progress bar (default: when stderr is a terminal).
        #[arg(long, overrides_with = "no_progress")]
        progress: bool,
        /// Never show a progress bar.
        #[arg(long)]
        no_progress: bool,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
}

#[derive(Args, Clone)]
struct ClientTlsArgs {
    /// TLS credentials directory (QEMU layout: ca-cert.pem, optional client-cert.pem and
    /// client-key.pem) for nbds URIs; the URI's tls-certificates= wins.
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<PathBuf>,
    /// Also allow TLS 1.2 (default: TLS 1.3 only).
    #[arg(long)]
    tls12: bool,
}

impl ClientTlsArgs {
    fn get(&self) -> ClientTls {
        ClientTls {
            creds: self.tls_creds.clone(),
            tls12: self.tls12,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TlsArg {
    /// No TLS (STARTTLS is refused).
    Off,
    /// TLS offered, plaintext allowed (nbdkit --tls=on).
    On,
    /// TLS required before anything is revealed (nbdkit --tls=require, QEMU with tls-creds).
    Require,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum YesNo {
    Yes,
    No,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (repeatable).
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Unix socket to listen on.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Export a file or block device (repeatable).
    #[arg(long = "export", value_name = "NAME=PATH")]
    exports: Vec<String>,
    /// Export a RAM disk (repeatable). Its data lives only as long as the process: FLUSH and
    /// FUA promise nothing for it (file exports: acknowledged after FLUSH or with FUA means on
    /// disk).
    #[arg(long = "memory", value_name = "NAME=SIZE")]
    memory: Vec<String>,
    /// Refuse writes on every export.
    #[arg(long)]
    read_only: bool,
    /// Most connections served at once (more are closed, and logged).
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Listen backlog: connections the kernel completes and holds until they are accepted
    /// (default: the most the system allows, net.core.somaxconn).
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,
    /// Seconds a client may take to finish negotiation (0: no limit).
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// TLS policy.
    #[arg(long, value_enum, default_value_t = TlsArg::Off)]
    tls: TlsArg,
    /// TLS credentials directory in the QEMU layout (ca-cert.pem, server-cert.pem,
    /// server-key.pem, optional ca-crl.pem); default $HOME/.pki/qemu or /etc/pki/qemu.
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<PathBuf>,
    /// Require and verify client certificates (default yes, as QEMU).
    #[arg(long, value_enum, default_value_t = YesNo::Yes)]
    tls_verify_peer: YesNo,
    /// Allow only clients whose certificate DN matches (exact, or a glob with * and ?;
    /// repeatable), e.g. 'C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com'.
    #[arg(long, value_name = "DN")]
    tls_authz: Vec<String>,
    /// Also allow TLS 1.2 (default: TLS 1.3 only).
    #[arg(long)]
    tls12: bool,
    /// Serve connections on tokio tasks instead of threads.
    #[arg(long, value_enum, default_value_t = Runtime::Threads)]
    runtime: Runtime,
}

#[derive(Subcommand)]
enum CredsCommand {
    /// Create a CA, server and client certificates and an empty CRL in DIR (QEMU layout,
    /// usable by qemu-nbd, nbdkit, libnbd and kvmio).
    Generate {
        /// Directory to create.
        dir: PathBuf,
        /// Server host names (repeatable; default localhost).
        #[arg(long = "hostname", value_name = "H")]
        hostnames: Vec<String>,
        /// Server IP addresses (repeatable; default 127.0.0.1 and ::1).
        #[arg(long = "ip", value_name = "A")]
        ips: Vec<IpAddr>,
        /// Common name of the client certificate.
        #[arg(long, default_value = "client.example.com")]
        client_cn: String,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Key type.
        #[arg(long, value_enum, default_value_t = KeyArg::EcdsaP256)]
        key: KeyArg,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Check the credentials in DIR as QEMU does at load time, and explain every problem.
    Check {
        /// Directory in the QEMU layout.
        dir: PathBuf,
        /// Which certificate to check.
        #[arg(long, value_enum)]
        endpoint: EndpointArg,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KeyArg {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum EndpointArg {
    Server,
    Client,
}

fn nbd_serve(a: ServeArgs) -> Result<()> {
    let (files, memory) = std_shim::nbd::catalog::parse_export_args(&a.exports, &a.memory)?;
    let catalog = Catalog::build(&files, &memory, a.read_only, 64 << 20)?;
    let endpoints = std_shim::io::endpoints(&a.listen, a.unix.as_deref(), 10809)?;
    let tls_mode = match a.tls {
        TlsArg::Off => TlsMode::Off,
        TlsArg::On => TlsMode::Selective,
        TlsArg::Require => TlsMode::Forced,
    };
    let tls = if a.tls == TlsArg::Off {
        if a.tls_creds.is_some() || !a.tls_authz.is_empty() {
            bail!("--tls-creds and --tls-authz need --tls on or --tls require");
        }
        None
    } else {
        let dir = std_shim::tls::creds_dir(a.tls_creds.as_deref())?;
        Some(std_shim::tls::server_config(
            &dir,
            a.tls_verify_peer == YesNo::Yes,
            &a.tls_authz,
            a.tls12,
        )?)
    };
    let service = std_shim::nbd::server::service(
        catalog,
        std_shim::nbd::server::NbdServiceOptions {
            endpoints,
            tls_mode,
            tls,
            handshake_timeout: (a.handshake_timeout > 0)
                .then(|| Duration::from_secs(a.handshake_timeout)),
            max_connections: a.max_connections,
            backlog: a.backlog,
        },
    );
    let control = Arc::new(ServerControl::default());
    services::stop_on_signals(&control)?;
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

fn nbd_info(uri: &str, json: bool, tls: &ClientTlsArgs) -> Result<()> {
    let uri = NbdUri::parse(uri)?;
    let info = nbd_client::run(&uri, &tls.get(), Goal::Go, InfoApp::default())?;
    if json {
        let f = TransmissionFlags::from_bits_retain(info.flags);
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
    let f = TransmissionFlags::from_bits_retain(info.flags);
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

fn nbd_ping(uri: &str, count: u32, tls: &ClientTlsArgs) -> Result<()> {
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

fn nbd_list(uri: &str, tls: &ClientTlsArgs) -> Result<()> {
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

fn creds(c: CredsCommand) -> Result<()> {
    match c {
        CredsCommand::Generate {
            dir,
            hostnames,
            ips,
            client_cn,
            days,
            key,
            force,
        } => {
            let mut o = tls_glue::GenerateOptions::default();
            if !hostnames.is_empty() {
                o.hostnames = hostnames;
            }
            if !ips.is_empty() {
                o.ips = ips;
            }
            o.client_cn = client_cn;
            o.validity_days = days;
            o.overwrite = force;
            o.key_algorithm = match key {
                KeyArg::EcdsaP256 => tls_glue::KeyAlgorithm::EcdsaP256,
                KeyArg::EcdsaP384 => tls_glue::KeyAlgorithm::EcdsaP384,
                KeyArg::Ed25519 => tls_glue::KeyAlgorithm::Ed25519,
                KeyArg::Rsa2048 => tls_glue::KeyAlgorithm::Rsa2048,
                KeyArg::Rsa3072 => tls_glue::KeyAlgorithm::Rsa3072,
            };
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let g = tls_glue::generate_qemu_layout(&dir, &o)?;
            for f in &g.files {
                say!("wrote {}", f.display());
            }
            say!("client certificate DN (for --tls-authz): {}", g.client_dn);
            say!("server certificate SHA-256: {}", g.server_fingerprint);
            Ok(())
        }
        CredsCommand::Check { dir, endpoint } => {
            let e = match endpoint {
                EndpointArg::Server => tls_glue::Endpoint::Server,
                EndpointArg::Client => tls_glue::Endpoint::Client,
            };
            let report = tls_glue::check_dir(&dir, e);
            if report.diagnostics.is_empty() {
                say!(
                    "{}: the {} credentials are fine",
                    dir.display(),
                    endpoint_name(endpoint)
                );
                return Ok(());
            }
            print!("{report}");
            if report.has_errors() {
                bail!(
                    "{}: the {} credentials cannot be used",
                    dir.display(),
                    endpoint_name(endpoint)
                );
            }
            Ok(())
        }
    }
}

fn endpoint_name(e: EndpointArg) -> &'static str {
    match e {
        EndpointArg::Server => "server",
        EndpointArg::Client => "client",
    }
}

fn main() {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Top::Nbd(NbdCommand::Serve(_)))
        || matches!(cli.command, Top::Serve(_))
        || matches!(&cli.command, Top::Vnc(v) if v.is_serve());
    let level = match (cli.verbose, serving) {
        (0, true) => "info",
        (0, false) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    // Past RLIMIT_FSIZE a write fails with EFBIG (reported like any I/O error) instead of
    // SIGXFSZ ending the process, as servers and copy tools want.
    if let Err(e) = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        log::warn!("SIGXFSZ: {e}");
    }
    let r = match cli.command {
        Top::Nbd(NbdCommand::Serve(a)) => nbd_serve(a),
        Top::Nbd(NbdCommand::Info { uri, json, tls }) => nbd_info(&uri, json, &tls),
        Top::Nbd(NbdCommand::List { uri, tls }) => nbd_list(&uri, &tls),
        Top::Nbd(NbdCommand::Ping { uri, count, tls }) => {
            if count == 0 {
                Err(anyhow::anyhow!("--count must be at least 1"))
            } else {
                nbd_ping(&uri, count, &tls)
            }
        }
        Top::Nbd(NbdCommand::Copy {
            src,
            dst,
            connections,
            request_size,
            progress,
            no_progress,
            tls,
        }) => (|| {
            let opts = CopyOptions {
                connections,
                request_size: u32::try_from(parse_size(&request_size)?)
                    .context("request size over 4 GiB")?,
                tls: tls.get(),
                progress: !no_progress && (progress || std::io::stderr().is_terminal()),
            };
            copy(&Place::parse(&src)?, &Place::parse(&dst)?, &opts).map(|_| ())
        })(),
        Top::Creds(c) => creds(c),
        Top::Vnc(v) => std_shim::vnc::cli::run(v),
        Top::Serve(a) => std_shim::serve_all::run(*a),
    };
    if let Err(e) = r {
        // A closed stdout (`kvmio nbd info … | head`) is how pipelines end, not an error.
        let stdout_closed = e
            .chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            && std::io::Write::flush(&mut std::io::stdout()).is_err();
        if !stdout_closed {
            eprintln!("kvmio: {e:#}");
            std::process::exit(1);
        }
    }
}
