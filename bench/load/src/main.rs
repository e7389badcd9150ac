//! `kvmio-load`: connection bursts and held connections against NBD and VNC servers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kvmio_load::{nbd, vnc};

#[derive(Parser)]
#[command(name = "kvmio-load", about = "Load for NBD and VNC servers")]
struct Cli {
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N NBD clients at once, each: (STARTTLS,) GO, four 64 KiB READs checked against FILE, a
    /// WRITE of its own 4 KiB block, FLUSH, that block read back and checked, DISC.
    NbdBurst {
        /// nbd:// or nbds:// URI of the export.
        #[arg(long)]
        uri: String,
        /// TLS credentials directory (QEMU layout) for nbds://.
        #[arg(long)]
        tls_creds: Option<PathBuf>,
        /// How many clients.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// The file the export serves (reads are checked against its first half; each client
        /// writes its own block in the second half).
        #[arg(long)]
        file: PathBuf,
        /// Seconds each client may take in all.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// N NBD connections negotiated and held open at once; meanwhile a new client runs the
    /// burst sequence; then each held connection does a checked READ.
    Hold {
        /// nbd:// or nbds:// URI of the export.
        #[arg(long)]
        uri: String,
        /// TLS credentials directory for nbds://.
        #[arg(long)]
        tls_creds: Option<PathBuf>,
        /// How many connections.
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        /// The file the export serves.
        #[arg(long)]
        file: PathBuf,
        /// The server's PID, to report its memory per connection.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Seconds to open them all.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Seconds to keep them held after the fresh client ran.
        #[arg(long, default_value_t = 0)]
        keep: u64,
    },
    /// N RFB clients at once (security None): served, or refused with a reason.
    VncBurst {
        /// HOST:PORT.
        #[arg(long)]
        addr: String,
        /// How many clients.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds each client may take.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

fn print<T: serde::Serialize + std::fmt::Display>(json: bool, r: &T) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!("{r}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    kvmio_load::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.command {
            Command::NbdBurst {
                uri,
                tls_creds,
                clients,
                file,
                timeout,
            } => {
                let t = nbd::Target::new(&uri, tls_creds, &file)?;
                let r = nbd::burst(&t, clients, Duration::from_secs(timeout)).await?;
                print(cli.json, &r)?;
                if !cli.json {
                    for e in &r.examples {
                        eprintln!("  {e}");
                    }
                }
                anyhow::ensure!(r.lost() == 0, "{} clients failed", r.lost());
            }
            Command::Hold {
                uri,
                tls_creds,
                connections,
                file,
                server_pid,
                timeout,
                keep,
            } => {
                let t = nbd::Target::new(&uri, tls_creds, &file)?;
                let r = nbd::hold(
                    &t,
                    connections,
                    server_pid,
                    Duration::from_secs(timeout),
                    Duration::from_secs(keep),
                )
                .await?;
                if cli.json {
                    println!("{}", serde_json::to_string(&r)?);
                } else {
                    println!("held {} of {} connections", r.held, r.asked);
                    println!("fresh client while held: {}", r.fresh);
                    println!("held connections' final READ: {}", r.finished);
                    if let (Some([a, b, c]), Some(per)) = (r.rss_kib, r.kib_per_connection) {
                        println!(
                            "server RSS {a} KiB before, {b} KiB held, {c} KiB after: \
                             {per:.1} KiB per connection"
                        );
                    }
                }
                anyhow::ensure!(
                    r.held == connections && r.fresh.lost() == 0 && r.finished.lost() == 0,
                    "not every connection was held and served"
                );
            }
            Command::VncBurst {
                addr,
                clients,
                timeout,
            } => {
                let r = vnc::burst(&addr, clients, Duration::from_secs(timeout)).await;
                print(cli.json, &r)?;
                anyhow::ensure!(r.lost == 0, "{} VNC clients got no answer", r.lost);
            }
        }
        Ok(())
    })
}
