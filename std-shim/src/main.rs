//! `kvmio`: serve and use NBD virtual media and VNC consoles, with TLS.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use std_shim::backend::{Backend, FileBackend, RamBackend};
use std_shim::nbd_server::{Catalog, ExportSpec, NbdServerSession};
use std_shim::pump::{Pump, run_blocking};
use std_shim::serve::{Control, Endpoint, parse_size, serve_threads};

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
}

#[derive(Subcommand)]
enum NbdCommand {
    /// Serve exports over NBD (default: a 64 MiB RAM disk "disk" on 127.0.0.1:10809).
    Serve(ServeArgs),
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
    /// Export a RAM disk (repeatable).
    #[arg(long = "memory", value_name = "NAME=SIZE")]
    memory: Vec<String>,
    /// Refuse writes on every export.
    #[arg(long)]
    read_only: bool,
    /// Most connections served at once.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
    /// Seconds a client may take to finish negotiation.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Serve connections on tokio tasks instead of threads.
    #[arg(long, value_enum, default_value_t = Runtime::Threads)]
    runtime: Runtime,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    Threads,
    Tokio,
}

fn split_pair(s: &str) -> Result<(&str, &str)> {
    s.split_once('=')
        .with_context(|| format!("expected NAME=VALUE, got {s:?}"))
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let with_port = if addr.parse::<SocketAddr>().is_ok()
        || addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:10809")
    };
    Ok(with_port
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .collect())
}

fn nbd_serve(a: ServeArgs) -> Result<()> {
    let mut specs = Vec::new();
    for e in &a.exports {
        let (name, path) = split_pair(e)?;
        let backend = FileBackend::open(path.as_ref(), a.read_only)
            .with_context(|| format!("open {path}"))?;
        specs.push(ExportSpec {
            name: name.into(),
            description: path.into(),
            backend: Arc::new(backend) as Arc<dyn Backend>,
            read_only: a.read_only,
            tls_only: false,
        });
    }
    for m in &a.memory {
        let (name, size) = split_pair(m)?;
        specs.push(ExportSpec {
            name: name.into(),
            description: format!("RAM disk of {size}"),
            backend: Arc::new(RamBackend::new(parse_size(size)?)?),
            read_only: a.read_only,
            tls_only: false,
        });
    }
    if specs.is_empty() {
        specs.push(ExportSpec {
            name: "disk".into(),
            description: "64 MiB RAM disk".into(),
            backend: Arc::new(RamBackend::new(64 << 20)?),
            read_only: a.read_only,
            tls_only: false,
        });
    }
    let catalog: &'static Catalog = Box::leak(Box::new(Catalog::new(specs)?));
    let mut endpoints = Vec::new();
    for l in &a.listen {
        endpoints.extend(resolve(l)?.into_iter().map(Endpoint::Tcp));
    }
    if let Some(p) = &a.unix {
        endpoints.push(Endpoint::Unix(p.clone()));
    }
    if a.listen.is_empty() && a.unix.is_none() {
        endpoints.push(Endpoint::Tcp("127.0.0.1:10809".parse()?));
    }
    let timeout = Duration::from_secs(a.handshake_timeout);
    let config = move || {
        let mut c = nbd_core::server::ServerConfig::new(catalog.exports());
        c.handshake_timeout = (!timeout.is_zero()).then_some(timeout);
        c
    };
    if a.runtime == Runtime::Tokio {
        bail!("the tokio runtime is not built in yet");
    }
    let control = Arc::new(Control::default());
    serve_threads(
        &endpoints,
        a.max_connections,
        control,
        |bound| {
            for (i, b) in bound.iter().enumerate() {
                for s in catalog.specs() {
                    eprintln!(
                        "kvmio: serving {:?} ({} bytes) on {b}",
                        s.name,
                        s.backend.size()
                    );
                }
                let _ = i;
            }
        },
        move |mut stream, peer| {
            let session = NbdServerSession::new(catalog, config(), peer)?;
            let cap = session.input_buffer_len();
            let mut pump = Pump::new(session, cap.max(4 << 20), None);
            run_blocking(&mut pump, &mut stream, |s, t| s.set_read_timeout(t))
        },
    )
}

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    let r = match cli.command {
        Top::Nbd(NbdCommand::Serve(a)) => nbd_serve(a),
    };
    if let Err(e) = r {
        eprintln!("kvmio: {e:#}");
        std::process::exit(1);
    }
}
