//! Running listening services (NBD, VNC, or both from one process): a session factory per
//! service, one shared stop flag, SIGINT/SIGTERM handling, the thread or tokio driver.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use clap::ValueEnum;
use tls_glue::TlsServerConfig;

use crate::pump::{OutBuf, PeerInfo, Processed, Pump, Session, run_blocking};
use crate::serve::{Control, Endpoint, serve_threads};

/// The I/O driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A thread per connection (blocking driver).
    Threads,
    /// A tokio task per connection.
    Tokio,
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
    /// The TLS configuration its sessions start when they ask for TLS.
    pub tls: Option<TlsServerConfig>,
    /// Makes sessions.
    pub factory: SessionFactory,
}

/// SIGINT and SIGTERM ask for a clean stop; a second one ends the process at once.
pub fn stop_on_signals(control: &Control) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, control.stopping.clone())?;
        signal_hook::flag::register(sig, control.stopping.clone())?;
    }
    Ok(())
}

/// Serves every service until `control.stop()` (or a signal, with [`stop_on_signals`]); then
/// every connection ends cleanly. `on_bound` gets each service's label, description and bound
/// addresses once all are listening.
pub fn run(
    services: Vec<Service>,
    runtime: Runtime,
    control: Arc<Control>,
    on_bound: impl Fn(&str, &str, &[String]) + Send + Sync,
) -> Result<()> {
    let on_bound = &on_bound;
    std::thread::scope(|scope| {
        let handles: Vec<_> = services
            .into_iter()
            .map(|svc| {
                let control = control.clone();
                scope.spawn(move || serve_one(svc, runtime, control, on_bound))
            })
            .collect();
        let mut result = Ok(());
        for h in handles {
            let r = h
                .join()
                .map_err(|_| anyhow!("service thread panicked"))
                .and_then(|r| r);
            if let Err(e) = r {
                // One service failing to start stops the others.
                control.stop();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    })
}

fn serve_one(
    svc: Service,
    runtime: Runtime,
    control: Arc<Control>,
    on_bound: &(impl Fn(&str, &str, &[String]) + Send + Sync),
) -> Result<()> {
    let Service {
        label,
        what,
        endpoints,
        max_connections,
        tls,
        factory,
    } = svc;
    let stop = control.stopping.clone();
    let announce = |bound: &[String]| on_bound(label, &what, bound);
    let starter = move || tls.clone().map(crate::tls::server_starter);
    match runtime {
        Runtime::Threads => serve_threads(
            &endpoints,
            max_connections,
            control,
            announce,
            move |mut stream, peer| {
                let (session, cap) = factory(peer)?;
                let mut pump = Pump::new(session, cap, starter());
                pump.watch(stop.clone());
                run_blocking(&mut pump, &mut stream)
            },
        ),
        #[cfg(feature = "tokio")]
        Runtime::Tokio => {
            let starter = Arc::new(starter);
            crate::serve::serve_tokio(
                &endpoints,
                max_connections,
                control,
                announce,
                move |mut stream, peer| {
                    let made = factory(peer);
                    let starter = starter.clone();
                    let stop = stop.clone();
                    async move {
                        let (session, cap) = made?;
                        let mut pump = Pump::new(session, cap, starter());
                        pump.watch(stop);
                        crate::pump::run_tokio(&mut pump, &mut stream).await
                    }
                },
            )
        }
        #[cfg(not(feature = "tokio"))]
        Runtime::Tokio => anyhow::bail!("this kvmio was built without the tokio driver"),
    }
}
