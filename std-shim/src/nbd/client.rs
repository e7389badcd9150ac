//! The NBD client side: a [`Session`] around `nbd_core::client::Client` and its negotiator,
//! with an application ([`ClientApp`]) that submits requests and takes replies, plus connecting
//! to an [`NbdUri`] (TCP or Unix, with TLS for `nbds`).

use anyhow::{Context, Result, anyhow, bail};
use nbd_core::client::{
    Client, ClientConfig, Event, ExportInfo, Goal, Item, NegotiateError, Negotiator, Plan,
    TlsPolicy,
};
use nbd_core::wire::{MAX_STRING_LEN, ReplyType, TransmissionFlags};

use crate::io::Stream;
use crate::io::blocking::run_blocking;
use crate::nbd::uri::{NbdUri, Transport};
use crate::pump::{Control, OutBuf, PeerInfo, Processed, Pump, Session, TlsStarter};

/// Requests one connection keeps in flight.
pub const DEPTH: usize = 16;

/// What runs on a client connection once it is negotiated.
pub trait ClientApp {
    /// An item during negotiation (list entries, info, meta contexts, option results).
    fn negotiation(&mut self, _item: &Item<'_>) -> Result<()> {
        Ok(())
    }
    /// The transmission phase began.
    fn ready(&mut self, _info: &ExportInfo, _client: &Client<DEPTH>) -> Result<()> {
        Ok(())
    }
    /// Encodes requests into `out` while the client can take them. Returns `true` once there is
    /// nothing more to send (the session then waits for the replies and disconnects).
    fn submit(&mut self, _client: &mut Client<DEPTH>, _out: &mut OutBuf) -> Result<bool> {
        Ok(true)
    }
    /// A reply (data is lent from the input: write it where it belongs now).
    fn reply(&mut self, _item: Item<'_>) -> Result<()> {
        Ok(())
    }
}

/// How to negotiate.
#[derive(Debug, Clone)]
pub struct Options {
    /// The export.
    pub export: String,
    /// TLS policy (`nbds` URIs: Require).
    pub tls: TlsPolicy,
    /// Ask for `base:allocation`.
    pub base_allocation: bool,
    /// Ask for extended headers.
    pub extended_headers: bool,
    /// What to do.
    pub goal: Goal,
}

impl Options {
    /// Negotiation for `uri` with `goal`.
    pub fn for_uri(uri: &NbdUri, goal: Goal) -> Self {
        Self {
            export: uri.export.clone(),
            tls: if uri.tls {
                TlsPolicy::Require
            } else {
                TlsPolicy::Disable
            },
            base_allocation: true,
            extended_headers: true,
            goal,
        }
    }
}

const BASE: &[&str] = &["base:allocation"];

/// One client connection running an application.
pub struct ClientSession<A> {
    client: Client<DEPTH>,
    negotiator: Negotiator,
    options: Options,
    app: A,
    submitted_all: bool,
    disconnected: bool,
    last_error: Option<String>,
}

impl<A: ClientApp> ClientSession<A> {
    /// A session negotiating per `options`, then running `app`.
    pub fn new(options: Options, app: A) -> Self {
        let mut config = ClientConfig::default();
        config.tls_required = options.tls == TlsPolicy::Require;
        config.max_reply_len = 64 * 1024;
        Self {
            client: Client::new(config),
            negotiator: Negotiator::new(),
            options,
            app,
            submitted_all: false,
            disconnected: false,
            last_error: None,
        }
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// Ends the session, returning the application.
    pub fn into_app(self) -> A {
        self.app
    }

    fn refused(&self, e: NegotiateError) -> anyhow::Error {
        let detail = self.last_error.as_deref().filter(|m| !m.is_empty());
        match (e, detail) {
            (NegotiateError::Refused(o, r), Some(m)) => anyhow!("server refused {o:?}: {r}: {m}"),
            (e, _) => anyhow!("{e}"),
        }
    }
}

impl<A: ClientApp> Session for ClientSession<A> {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        let mut consumed = 0;
        loop {
            while let Some(n) = self
                .client
                .poll_transmit(out.tail(64))
                .map_err(|e| anyhow!("{e}"))?
            {
                out.commit(n);
            }
            while let Some(e) = self.client.poll_event() {
                match e {
                    Event::StartTls => {
                        return Ok(Processed {
                            consumed,
                            control: Control::StartTls,
                        });
                    }
                    Event::Ready(info) => self.app.ready(&info, &self.client)?,
                    Event::Finished => {
                        return Ok(Processed {
                            consumed,
                            control: Control::Close,
                        });
                    }
                    _ => {}
                }
            }
            if !self.negotiator.is_done() {
                let plan = Plan {
                    export: &self.options.export,
                    tls: self.options.tls,
                    extended_headers: self.options.extended_headers,
                    structured_replies: true,
                    meta_contexts: if self.options.base_allocation {
                        BASE
                    } else {
                        &[]
                    },
                    goal: self.options.goal,
                };
                let r = self.negotiator.step(
                    &plan,
                    &mut self.client,
                    out.tail(2 * MAX_STRING_LEN + 64),
                );
                match r {
                    Ok(Some(n)) => out.commit(n),
                    Ok(None) => {}
                    Err(e) => return Err(self.refused(e)),
                }
            }
            if self.client.is_transmitting() {
                if !self.submitted_all {
                    self.submitted_all = self.app.submit(&mut self.client, out)?;
                }
                if self.submitted_all && self.client.in_flight() == 0 && !self.disconnected {
                    let n = self
                        .client
                        .disconnect(out.tail(64))
                        .map_err(|e| anyhow!("{e}"))?;
                    out.commit(n);
                    self.disconnected = true;
                    continue;
                }
            }
            let p = self
                .client
                .handle_input(&input[consumed..])
                .map_err(|e| anyhow!("nbd: {e}"))?;
            consumed += p.consumed;
            match p.item {
                Some(item)
                    if self.client.is_transmitting() || matches!(item, Item::Done { .. }) =>
                {
                    self.app.reply(item)?
                }
                Some(item) => {
                    if let Item::OptionDone { result: Err(e), .. } = &item {
                        self.last_error = Some(e.message.to_string());
                    }
                    self.app.negotiation(&item)?;
                }
                None if p.consumed == 0 => break,
                None => {}
            }
        }
        Ok(Processed {
            consumed,
            control: Control::Continue,
        })
    }

    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()> {
        log::debug!("TLS {}", peer.cipher);
        self.client.tls_established().map_err(|e| anyhow!("{e}"))
    }

    fn eof(&mut self) -> Result<()> {
        if self.disconnected {
            return Ok(());
        }
        self.client
            .handle_eof()
            .map_err(|e| match (e, self.options.tls) {
                (nbd_core::Error::UnexpectedEof, TlsPolicy::Require)
                    if !self.client.tls_active() =>
                {
                    anyhow!("server closed the connection before TLS was established")
                }
                (e, _) => anyhow!("nbd: {e}"),
            })
    }
}

/// TLS settings for connecting.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// Credentials directory (`--tls-creds`, or the URI's `tls-certificates`).
    pub creds: Option<std::path::PathBuf>,
    /// Also offer TLS 1.2.
    pub tls12: bool,
}

impl ClientTls {
    /// The client configuration from `dir` (a URI's own `tls-certificates`), else from
    /// [`creds`](Self::creds), else from QEMU's default directory. Loading and checking
    /// credentials costs more than a handshake, so it is done once per directory for the
    /// process (copy opens several connections, ping many, media reconnect).
    pub fn config(&self, dir: Option<&std::path::Path>) -> Result<tls_glue::TlsClientConfig> {
        let dir = crate::tls::creds_dir(dir.or(self.creds.as_deref()))?;
        type Cache = Vec<(std::path::PathBuf, bool, tls_glue::TlsClientConfig)>;
        static CONFIGS: std::sync::Mutex<Cache> = std::sync::Mutex::new(Vec::new());
        let mut cache = CONFIGS.lock().map_err(|_| anyhow!("poisoned"))?;
        Ok(
            match cache.iter().find(|(d, t, _)| *d == dir && *t == self.tls12) {
                Some((_, _, c)) => c.clone(),
                None => {
                    let c = crate::tls::client_config(&dir, self.tls12)?;
                    cache.push((dir, self.tls12, c.clone()));
                    c
                }
            },
        )
    }
}

/// Opens the transport of `uri`.
pub fn open(uri: &NbdUri) -> Result<Stream> {
    Ok(match &uri.transport {
        Transport::Tcp { host, port } => {
            let s = std::net::TcpStream::connect((host.as_str(), *port))
                .with_context(|| format!("connect to {host}:{port}"))?;
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        }
        Transport::Unix(p) => Stream::Unix(
            std::os::unix::net::UnixStream::connect(p)
                .with_context(|| format!("connect to {}", p.display()))?,
        ),
    })
}

/// The TLS starter for `uri` (None for plain `nbd://`).
pub fn starter(uri: &NbdUri, tls: &ClientTls) -> Result<Option<TlsStarter>> {
    if !uri.tls {
        return Ok(None);
    }
    if !uri.tls_verify_peer {
        bail!("tls-verify-peer=false is refused: kvmio always verifies the server's certificate");
    }
    let config = tls.config(uri.tls_certificates.as_deref())?;
    Ok(Some(crate::tls::client_starter(config, uri.server_name())))
}

/// Connects to `uri` and runs `app` to the end of the conversation.
pub fn run<A: ClientApp>(uri: &NbdUri, tls: &ClientTls, goal: Goal, app: A) -> Result<A> {
    let options = Options::for_uri(uri, goal);
    run_with(uri, tls, options, app)
}

/// [`run`] with explicit negotiation options.
pub fn run_with<A: ClientApp>(
    uri: &NbdUri,
    tls: &ClientTls,
    options: Options,
    app: A,
) -> Result<A> {
    let starter = starter(uri, tls)?;
    let mut stream = open(uri)?;
    let session = ClientSession::new(options, app);
    let mut pump = Pump::new(session, 4 << 20, starter);
    run_blocking(&mut pump, &mut stream).with_context(|| format!("{uri}"))?;
    Ok(pump.into_session().into_app())
}

/// What a server says about an export (`kvmio nbd info`).
#[derive(Debug, Clone, Default)]
pub struct InfoApp {
    /// The export name the server gave (or asked for).
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Size.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    /// Block size constraints: minimum, preferred, maximum.
    pub block_size: Option<(u32, u32, u32)>,
    /// Metadata contexts selected.
    pub contexts: Vec<String>,
    /// Header style.
    pub protocol: String,
    /// Whether TLS was used.
    pub tls: bool,
}

impl InfoApp {
    /// The transmission flags.
    pub fn transmission_flags(&self) -> TransmissionFlags {
        TransmissionFlags::from_bits_retain(self.flags)
    }
}

impl ClientApp for InfoApp {
    fn negotiation(&mut self, item: &Item<'_>) -> Result<()> {
        use nbd_core::wire::InfoReplyRepr as I;
        match item {
            Item::Info(I::Name(n)) => self.name = Some(n.to_string()),
            Item::Info(I::Description(d)) => self.description = Some(d.to_string()),
            Item::Info(I::BlockSize(b)) => {
                self.block_size = Some((b.minimum, b.preferred, b.maximum))
            }
            Item::MetaContext { name, .. } => self.contexts.push(name.to_string()),
            _ => {}
        }
        Ok(())
    }

    fn ready(&mut self, info: &ExportInfo, client: &Client<DEPTH>) -> Result<()> {
        self.size = info.size;
        self.flags = info.flags.bits();
        self.tls = client.tls_active();
        self.protocol = format!("{:?}", client.style()).to_lowercase();
        Ok(())
    }
}

/// What `kvmio nbd list` reports.
#[derive(Debug, Clone, Default)]
pub struct ListApp {
    /// (name, description) of each export.
    pub exports: Vec<(String, String)>,
}

impl ClientApp for ListApp {
    fn negotiation(&mut self, item: &Item<'_>) -> Result<()> {
        if let Item::ListEntry { name, description } = item {
            self.exports
                .push((name.to_string(), description.to_string()));
        }
        Ok(())
    }
}

/// Whether an option error means "TLS needed" (for clearer messages).
pub fn is_tls_required(r: ReplyType) -> bool {
    r == ReplyType::ErrTlsReqd
}
