//! A VNC console and NBD virtual media served together from one process, both over TLS from
//! one server configuration (as QEMU's `-object tls-creds-x509` shared by `-vnc` and its NBD
//! server) under one [`TlsPolicy`]: what `kvmio serve` runs once its flags and configuration
//! file are read.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std_shim::io::endpoints;
//! use std_shim::io::listen::ServerControl;
//! use std_shim::nbd::catalog::Catalog;
//! use std_shim::serve::{Serve, ServeOptions};
//! use std_shim::services::{Runtime, stop_on_signals};
//! use std_shim::tls::{TlsPolicy, server_config};
//! use std_shim::vnc::settings::VncSettings;
//!
//! # fn main() -> anyhow::Result<()> {
//! let tls = server_config("/etc/pki/qemu".as_ref(), true, &[], false)?;
//! let mut serve = Serve::new(ServeOptions {
//!     runtime: Runtime::Threads,
//!     policy: TlsPolicy::Require,
//!     tls: Some(tls),
//!     max_connections: 64,
//!     backlog: None,
//!     handshake_timeout: 10,
//! });
//! let vnc = VncSettings {
//!     security: None, // the X509 types the files allow
//!     name: "console",
//!     ..VncSettings::default()
//! };
//! serve.add_vnc(endpoints(&[], None, 5900)?, &vnc)?;
//! let remote = std_shim::nbd::client::ClientTls::default();
//! let catalog = Catalog::build(&[], &[("disk".into(), 64 << 20)], false, 0, &remote)?;
//! serve.add_nbd(catalog, endpoints(&[], None, 10809)?);
//! let control = Arc::new(ServerControl::default());
//! stop_on_signals(&control)?;
//! serve.run(control, |label, what, bound| {
//!     eprintln!("{label} serving {what} on {bound:?}")
//! })
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use tls_glue::TlsServerConfig;

use crate::io::Endpoint;
use crate::io::listen::ServerControl;
use crate::nbd::catalog::Catalog;
use crate::nbd::server::NbdServiceOptions;
use crate::services::{self, Runtime, Service};
use crate::tls::TlsPolicy;
use crate::vnc::server::VncServiceOptions;
use crate::vnc::settings::VncSettings;

/// What every service shares.
pub struct ServeOptions {
    /// Threads or tokio tasks.
    pub runtime: Runtime,
    /// The TLS policy of both services.
    pub policy: TlsPolicy,
    /// The one server configuration both services use (needed unless the policy is off).
    pub tls: Option<TlsServerConfig>,
    /// Most connections per service.
    pub max_connections: usize,
    /// Listen backlog of every listener (`None`: the most the system allows).
    pub backlog: Option<u32>,
    /// Seconds a client has to finish negotiating (NBD: 0 is no limit; VNC: at least 1).
    pub handshake_timeout: u64,
}

/// The services to run, added one by one (each checked as it is added), then run together.
pub struct Serve {
    options: ServeOptions,
    services: Vec<Service>,
    vnc: Option<SocketAddr>,
    nbd: Option<SocketAddr>,
    catalog: Option<&'static Catalog>,
    vnc_shared: Option<Arc<crate::vnc::server::VncShared>>,
    websocket: Option<SocketAddr>,
}

impl Serve {
    /// No services yet.
    pub fn new(options: ServeOptions) -> Self {
        Self {
            options,
            services: Vec::new(),
            vnc: None,
            nbd: None,
            catalog: None,
            vnc_shared: None,
            websocket: None,
        }
    }

    /// Adds the VNC console on `endpoints`. The policy decides which security types may be
    /// offered: with `require` only X509 ones, and X509 ones only when there is TLS.
    pub fn add_vnc(&mut self, endpoints: Vec<Endpoint>, settings: &VncSettings<'_>) -> Result<()> {
        let o = &self.options;
        let tls = o.tls.as_ref();
        let config = settings.server_config(tls.is_some(), o.handshake_timeout)?;
        let x509 = config.security.iter().any(|n| n.is_x509());
        if o.policy == TlsPolicy::Require && config.security.iter().any(|n| !n.is_x509()) {
            bail!(
                "--tls require: every VNC security type must be an X509 one (X509None, X509Vnc, X509Plain)"
            );
        }
        if x509 && tls.is_none() {
            bail!("the X509 VNC security types need TLS (--tls on or require)");
        }
        config.validate(x509)?;
        self.vnc = first_tcp(&endpoints);
        let shared = crate::vnc::server::VncShared::new(config);
        self.vnc_shared = Some(shared.clone());
        self.services.push(crate::vnc::server::service_shared(
            shared,
            VncServiceOptions {
                endpoints,
                tls: tls.filter(|_| x509).cloned(),
                max_connections: o.max_connections,
                backlog: o.backlog,
            },
        ));
        Ok(())
    }

    /// Adds the VNC console's WebSocket listener on `endpoints` (after [`add_vnc`](Self::add_vnc),
    /// whose viewers, input and security it shares): wss with the same credentials when TLS
    /// is on, ws otherwise, and `web`'s files for requests that are not upgrades.
    pub fn add_vnc_websocket(
        &mut self,
        endpoints: Vec<Endpoint>,
        web: Option<crate::web::WebRoot>,
    ) -> Result<()> {
        let Some(shared) = self.vnc_shared.clone() else {
            bail!("the WebSocket listener serves the VNC console: add it first");
        };
        let o = &self.options;
        let tls = o.tls.clone().filter(|_| o.policy != TlsPolicy::Off);
        self.websocket = first_tcp(&endpoints);
        self.services.push(crate::web::service(
            shared,
            crate::web::WebServiceOptions {
                endpoints,
                tls,
                web,
                max_connections: o.max_connections,
                backlog: o.backlog,
            },
        )?);
        Ok(())
    }

    /// The first TCP address of the WebSocket listener (once added).
    pub fn websocket_address(&self) -> Option<SocketAddr> {
        self.websocket
    }

    /// Adds NBD virtual media: `catalog` on `endpoints`.
    pub fn add_nbd(&mut self, catalog: &'static Catalog, endpoints: Vec<Endpoint>) {
        let o = &self.options;
        self.nbd = first_tcp(&endpoints);
        self.catalog = Some(catalog);
        self.services.push(crate::nbd::server::service(
            catalog,
            NbdServiceOptions {
                endpoints,
                tls_mode: o.policy.nbd_mode(),
                tls: o.tls.clone(),
                handshake_timeout: (o.handshake_timeout > 0)
                    .then(|| Duration::from_secs(o.handshake_timeout)),
                max_connections: o.max_connections,
                backlog: o.backlog,
            },
        ));
    }

    /// The first TCP address the VNC console listens on (once added).
    pub fn vnc_address(&self) -> Option<SocketAddr> {
        self.vnc
    }

    /// The first TCP address NBD listens on (once added).
    pub fn nbd_address(&self) -> Option<SocketAddr> {
        self.nbd
    }

    /// The NBD exports (once added).
    pub fn catalog(&self) -> Option<&'static Catalog> {
        self.catalog
    }

    /// How many services were added.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether none was added.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Serves every service until `control.stop()` (see [`services::run`], which calls
    /// `on_bound` as each service listens), then flushes the NBD exports, whether serving
    /// ended cleanly or not.
    pub fn run(
        self,
        control: Arc<ServerControl>,
        on_bound: impl Fn(&str, &str, &[String]),
    ) -> Result<()> {
        let result = services::run(self.services, self.options.runtime, control, on_bound);
        if let Some(c) = self.catalog {
            c.flush_all();
        }
        result
    }
}

fn first_tcp(e: &[Endpoint]) -> Option<SocketAddr> {
    e.iter().find_map(|e| match e {
        Endpoint::Tcp(a) => Some(*a),
        Endpoint::Unix(_) => None,
    })
}
