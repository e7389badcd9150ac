//! `kvmio nbd …`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use std_shim::nbd::client::ClientTls;
use std_shim::services::Runtime;
use std_shim::tls::TlsPolicy;

use super::{YES_NO, YesNo, nbd_tls_policy, one_of, runtime};

/// `kvmio nbd …`.
#[derive(Subcommand)]
pub(crate) enum NbdCommand {
    /// Serve exports over NBD (default: a 64 MiB RAM disk "disk" on 127.0.0.1:10809).
    Serve(NbdServeArgs),
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
    Copy(CopyArgs),
}

/// `kvmio nbd copy`.
#[derive(Args)]
pub(crate) struct CopyArgs {
    /// Source: an NBD URI, a file, or `-`.
    pub(crate) src: String,
    /// Destination: an NBD URI, a file, or `-`.
    pub(crate) dst: String,
    /// Most connections per NBD side (used when the server allows several).
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// Request size.
    #[arg(long, default_value = "1M")]
    pub(crate) request_size: String,
    /// Show a progress bar (default: when stderr is a terminal).
    #[arg(long, overrides_with = "no_progress")]
    pub(crate) progress: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub(crate) no_progress: bool,
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
}

/// TLS for the client commands.
#[derive(Args, Clone)]
pub(crate) struct ClientTlsArgs {
    /// TLS credentials directory (QEMU layout: ca-cert.pem, optional client-cert.pem and
    /// client-key.pem) for nbds URIs; the URI's tls-certificates= wins.
    #[arg(long, value_name = "DIR")]
    pub(crate) tls_creds: Option<PathBuf>,
    /// Also allow TLS 1.2 (default: TLS 1.3 only).
    #[arg(long)]
    pub(crate) tls12: bool,
}

impl ClientTlsArgs {
    /// The library's client TLS settings.
    pub(crate) fn get(&self) -> ClientTls {
        ClientTls {
            creds: self.tls_creds.clone(),
            tls12: self.tls12,
        }
    }
}

/// `kvmio nbd serve`.
#[derive(Args)]
pub(crate) struct NbdServeArgs {
    /// Address to listen on (repeatable).
    #[arg(long = "listen", value_name = "ADDR")]
    pub(crate) listen: Vec<String>,
    /// Unix socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub(crate) unix: Option<PathBuf>,
    /// Export a file, a block device, an http:// or https:// URL (read with range requests,
    /// read-only) or another server's export (nbd://, nbds://, nbd+unix://) (repeatable).
    #[arg(long = "export", value_name = "NAME=PATH")]
    pub(crate) exports: Vec<String>,
    /// Credentials directory (ca-cert.pem, optional client-cert.pem and client-key.pem)
    /// verifying https:// and nbds:// exports (default: --tls-creds, else QEMU's default
    /// directory).
    #[arg(long, value_name = "DIR")]
    pub(crate) remote_tls_creds: Option<PathBuf>,
    /// Export a RAM disk (repeatable). Its data lives only as long as the process: FLUSH and
    /// FUA promise nothing for it (file exports: acknowledged after FLUSH or with FUA means on
    /// disk).
    #[arg(long = "memory", value_name = "NAME=SIZE")]
    pub(crate) memory: Vec<String>,
    /// Refuse writes on every export.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Most connections served at once (more are closed, and logged).
    #[arg(long, default_value_t = 64)]
    pub(crate) max_connections: usize,
    /// Listen backlog: connections the kernel completes and holds until they are accepted
    /// (default: the most the system allows, net.core.somaxconn).
    #[arg(long, value_name = "N")]
    pub(crate) backlog: Option<u32>,
    /// Seconds a client may take to finish negotiation (0: no limit).
    #[arg(long, default_value_t = 10)]
    pub(crate) handshake_timeout: u64,
    /// TLS policy.
    #[arg(long, value_parser = nbd_tls_policy(), default_value_t = TlsPolicy::Off)]
    pub(crate) tls: TlsPolicy,
    /// TLS credentials directory in the QEMU layout (ca-cert.pem, server-cert.pem,
    /// server-key.pem, optional ca-crl.pem); default $HOME/.pki/qemu or /etc/pki/qemu.
    #[arg(long, value_name = "DIR")]
    pub(crate) tls_creds: Option<PathBuf>,
    /// Require and verify client certificates (default yes, as QEMU).
    #[arg(long, value_parser = one_of::<YesNo>(YES_NO), default_value_t = YesNo::Yes)]
    pub(crate) tls_verify_peer: YesNo,
    /// Allow only clients whose certificate DN matches (exact, or a glob with * and ?;
    /// repeatable), e.g. 'C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com'.
    #[arg(long, value_name = "DN")]
    pub(crate) tls_authz: Vec<String>,
    /// Also allow TLS 1.2 (default: TLS 1.3 only).
    #[arg(long)]
    pub(crate) tls12: bool,
    /// Serve connections on tokio tasks instead of threads.
    #[arg(long, value_parser = runtime(), default_value_t = Runtime::Threads)]
    pub(crate) runtime: Runtime,
}
