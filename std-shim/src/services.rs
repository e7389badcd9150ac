//! Running listening services (NBD, VNC, or both from one process): a session factory per
//! service, one shared stop flag, SIGINT/SIGTERM handling, the thread or tokio driver (one
//! runtime for every service), the open-file limit raised and checked against the caps.

use std::sync::Arc;

use anyhow::Result;
use tls_glue::TlsServerConfig;

use crate::io::Endpoint;
use crate::io::blocking::run_blocking;
use crate::io::listen::{self, Admit, Gate, Listener, ServerControl};
use crate::pump::{OutBuf, PeerInfo, Processed, Pump, Session};

/// The I/O driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// A thread per connection (blocking driver).
    Threads,
    /// A tokio task per connection.
    Tokio,
}

impl Runtime {
    /// The names [`FromStr`](std::str::FromStr) takes, in the order of the variants.
    pub const NAMES: [&'static str; 2] = ["threads", "tokio"];

    /// Its name: `threads` or `tokio`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Threads => "threads",
            Runtime::Tokio => "tokio",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Runtime {
    type Err = anyhow::Error;

    /// `threads` or `tokio`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "threads" => Ok(Runtime::Threads),
            "tokio" => Ok(Runtime::Tokio),
            _ => anyhow::bail!("unknown runtime {s:?} (threads, tokio)"),
        }
    }
}

/// A session of any protocol.
pub type BoxedSession = Box<dyn Session + Send>;

impl Session for BoxedSession {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        (**self).process(input, out)
    }
    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()> {
        (**self).tls_established(peer)
    }
    fn eof(&mut self) -> Result<()> {
        (**self).eof()
    }
    fn deadline(&self) -> Option<std::time::Instant> {
        (**self).deadline()
    }
    fn timeout(&mut self, now: std::time::Instant) {
        (**self).timeout(now)
    }
    fn shutdown(&mut self, out: &mut OutBuf) -> Result<()> {
        (**self).shutdown(out)
    }
}

/// Makes a session for a new connection from `peer`; returns it with the input buffer it needs.
pub type SessionFactory = Arc<dyn Fn(String) -> Result<(BoxedSession, usize)> + Send + Sync>;

/// One listening service.
pub struct Service {
    /// For logs: "nbd", "vnc".
    pub label: &'static str,
    /// What is served, for the start-up lines.
    pub what: String,
    /// Where to listen.
    pub endpoints: Vec<Endpoint>,
    /// Most connections at once.
    pub max_connections: usize,
    /// The listen backlog (connections the kernel completes and holds until they are
    /// accepted); `None`: the most the system allows (`net.core.somaxconn`).
    pub backlog: Option<u32>,
    /// The TLS configuration its sessions start when they ask for TLS.
    pub tls: Option<TlsServerConfig>,
    /// Makes sessions.
    pub factory: SessionFactory,
    /// Makes a session that tells a connection over `max_connections` why it is refused, for
    /// protocols that have a way to say so (VNC); without one, such connections are closed.
    pub refusal: Option<SessionFactory>,
}

/// SIGINT and SIGTERM ask for a clean stop; a second one ends the process at once.
pub fn stop_on_signals(control: &ServerControl) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, control.stopping.clone())?;
        signal_hook::flag::register(sig, control.stopping.clone())?;
    }
    Ok(())
}

/// Serves every service until `control.stop()` (or a signal, with [`stop_on_signals`]); then
/// every connection ends cleanly. `on_bound` gets each service's label, description and bound
/// addresses once it is listening. Every listener is bound before any is served, so a service
/// that cannot listen stops the start. Raises the open-file limit to its hard limit and warns
/// when the connection caps are above what it allows; the thread driver lowers caps above
/// [`listen::THREADS_MAX_CONNECTIONS`] (in all) to it, and says so.
pub fn run(
    services: Vec<Service>,
    runtime: Runtime,
    control: Arc<ServerControl>,
    on_bound: impl Fn(&str, &str, &[String]),
) -> Result<()> {
    let mut services = services;
    let total: usize = services.iter().map(|s| s.max_connections).sum();
    if runtime == Runtime::Threads && total > listen::THREADS_MAX_CONNECTIONS {
        log::warn!(
            "--runtime threads serves at most {} connections at once (a thread each), not the \
             {total} of --max-connections: past that they are refused; --runtime tokio has no \
             such limit",
            listen::THREADS_MAX_CONNECTIONS
        );
        let share = listen::THREADS_MAX_CONNECTIONS / services.len().max(1);
        for s in &mut services {
            s.max_connections = s.max_connections.min(share);
        }
    }
    let total: usize = services.iter().map(|s| s.max_connections).sum();
    let nofile = listen::raise_nofile_limit();
    let usable = nofile.saturating_sub(listen::FD_HEADROOM);
    if total as u64 > usable {
        log::warn!(
            "--max-connections {total} is above what the open-file limit allows \
             (RLIMIT_NOFILE {nofile}): past about {usable} connections new ones are closed"
        );
    }
    let system = listen::system_backlog();
    let mut bound = Vec::new();
    for svc in services {
        let backlog = svc.backlog.unwrap_or(system);
        if backlog > system {
            log::warn!(
                "{}: listen backlog {backlog} is capped by net.core.somaxconn to {system}",
                svc.label
            );
        }
        let listeners = svc
            .endpoints
            .iter()
            .map(|e| Listener::bind(e, backlog))
            .collect::<Result<Vec<_>>>()?;
        let addrs: Vec<_> = listeners.iter().map(Listener::local).collect();
        log::debug!("{}: listen backlog {}", svc.label, backlog.min(system));
        on_bound(svc.label, &svc.what, &addrs);
        bound.push((Connections::new(svc, &control), listeners));
    }
    match runtime {
        Runtime::Threads => run_threads(bound, &control),
        #[cfg(feature = "tokio")]
        Runtime::Tokio => run_tokio(bound, &control)?,
        #[cfg(not(feature = "tokio"))]
        Runtime::Tokio => anyhow::bail!("this kvmio was built without the tokio driver"),
    }
    Ok(())
}

/// How one service's connections are set up.
#[derive(Clone)]
struct Connections {
    gate: Gate,
    tls: Option<TlsServerConfig>,
    factory: SessionFactory,
    refusal: Option<SessionFactory>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Connections {
    fn new(svc: Service, control: &ServerControl) -> Self {
        Self {
            gate: Gate {
                max_connections: svc.max_connections.max(1),
                explain_refusals: svc.refusal.is_some(),
            },
            tls: svc.tls,
            factory: svc.factory,
            refusal: svc.refusal,
            stop: control.stopping.clone(),
        }
    }

    /// The pump for a connection from `peer`: a session of the service, or its refusal.
    fn pump(&self, peer: String, admit: Admit) -> Result<Pump<BoxedSession>> {
        let (factory, tls) = match (admit, &self.refusal) {
            (Admit::Refuse, Some(refusal)) => (refusal, None),
            _ => (&self.factory, self.tls.clone()),
        };
        let (session, cap) = factory(peer)?;
        let mut pump = Pump::new(session, cap, tls.map(crate::tls::server_starter));
        pump.watch(self.stop.clone());
        Ok(pump)
    }
}

fn run_threads(bound: Vec<(Connections, Vec<Listener>)>, control: &Arc<ServerControl>) {
    std::thread::scope(|scope| {
        for (conns, listeners) in &bound {
            let handler: listen::ThreadHandler = {
                let conns = conns.clone();
                Arc::new(move |mut stream, peer, admit| {
                    let mut pump = conns.pump(peer, admit)?;
                    run_blocking(&mut pump, &mut stream)
                })
            };
            for l in listeners {
                let handler = handler.clone();
                scope.spawn(move || listen::accept_threads(l, conns.gate, control, &handler));
            }
        }
    });
    control.wait_for_connections();
}

#[cfg(feature = "tokio")]
fn run_tokio(bound: Vec<(Connections, Vec<Listener>)>, control: &Arc<ServerControl>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut accepting = tokio::task::JoinSet::new();
        for (conns, listeners) in bound {
            let handler: listen::TaskHandler = {
                let conns = conns.clone();
                Arc::new(move |mut stream, peer, admit| {
                    let conns = conns.clone();
                    Box::pin(async move {
                        let mut pump = conns.pump(peer, admit)?;
                        crate::io::tokio::run_tokio(&mut pump, &mut stream).await
                    })
                })
            };
            for l in listeners {
                accepting.spawn(listen::accept_tokio(
                    l,
                    conns.gate,
                    control.clone(),
                    handler.clone(),
                ));
            }
        }
        while let Some(r) = accepting.join_next().await {
            if let Err(e) = r? {
                // An accept loop that cannot go on stops the server.
                control.stop();
                return Err(e);
            }
        }
        Ok::<(), anyhow::Error>(())
    })?;
    // The connection tasks go on running on the runtime's workers meanwhile.
    control.wait_for_connections();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtimes_by_name() {
        for name in Runtime::NAMES {
            assert_eq!(name.parse::<Runtime>().unwrap().to_string(), name);
        }
        assert!("Threads".parse::<Runtime>().is_err());
    }
}
