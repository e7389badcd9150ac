//! A blocking TLS client stream over `tls_glue::TlsLayer`, for raw NBD tests that upgrade a
//! socket after `NBD_OPT_STARTTLS`. It records the ciphertext it sends (to replay handshake
//! prefixes) and what it receives (to check what the server said).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;

use tls_glue::{
    ClientOptions, CredsOptions, Endpoint, TlsClientConfig, TlsCreds, TlsError, TlsLayer,
};

/// A client TLS configuration from a QEMU-layout directory (`ca-cert.pem`, optional
/// `client-cert.pem`/`client-key.pem`). Panics if the credentials are unusable.
pub fn client_config(dir: &Path) -> TlsClientConfig {
    let creds = TlsCreds::load_dir(dir, CredsOptions::system(Endpoint::Client))
        .unwrap_or_else(|r| panic!("client credentials in {}:\n{r}", dir.display()));
    TlsClientConfig::with_options(&creds, &ClientOptions::default())
        .unwrap_or_else(|e| panic!("client TLS configuration: {e}"))
}

/// A TLS client over a TCP stream.
pub struct TlsStream {
    sock: TcpStream,
    layer: TlsLayer,
    /// Every ciphertext byte sent, in order.
    pub sent: Vec<u8>,
    /// Every ciphertext byte received, in order.
    pub received: Vec<u8>,
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("TLS: {e}"))
}

impl TlsStream {
    /// Starts a client connection to `server_name` on `sock` (nothing is sent until
    /// [`handshake`](Self::handshake), [`read`](Read::read) or [`write`](Write::write)).
    pub fn client(sock: TcpStream, config: &TlsClientConfig, server_name: &str) -> Self {
        let layer =
            TlsLayer::client(config, server_name).unwrap_or_else(|e| panic!("TLS client: {e}"));
        Self {
            sock,
            layer,
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    /// The TCP stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.sock
    }

    fn flush_tls(&mut self) -> io::Result<()> {
        loop {
            let p = self.layer.pending_transmit();
            if p.is_empty() {
                return Ok(());
            }
            let n = p.len();
            self.sock.write_all(p)?;
            self.sent.extend_from_slice(p);
            self.layer.transmit_done(n);
        }
    }

    /// Receives ciphertext once; `Ok(false)` at end of stream.
    fn pull(&mut self) -> io::Result<bool> {
        if let Some(e) = self.layer.error() {
            return Err(tls_error(e));
        }
        let buf = self.layer.ciphertext_buffer();
        if buf.is_empty() {
            return Err(io::Error::other("TLS receive buffer full"));
        }
        let n = self.sock.read(buf)?;
        if n == 0 {
            return match self.layer.handle_eof() {
                Ok(()) => Ok(false),
                Err(e) => Err(io::Error::new(ErrorKind::UnexpectedEof, tls_error(e))),
            };
        }
        self.received.extend_from_slice(&buf[..n]);
        let r = self.layer.commit_ciphertext(n);
        // an alert may be queued even on error
        let _ = self.flush_tls();
        r.map_err(tls_error)?;
        Ok(true)
    }

    /// Runs the handshake to completion (including sending our last flight).
    pub fn handshake(&mut self) -> io::Result<()> {
        loop {
            self.flush_tls()?;
            if let Some(e) = self.layer.error() {
                return Err(tls_error(e));
            }
            if !self.layer.is_handshaking() {
                return Ok(());
            }
            if !self.pull()? {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "server closed during the TLS handshake",
                ));
            }
        }
    }

    /// The TLS layer's fatal error, if any (e.g. `PeerAlert(code)` when the server sent an
    /// alert).
    pub fn error(&self) -> Option<TlsError> {
        self.layer.error()
    }

    /// The server certificate's subject, once known.
    pub fn peer_subject(&self) -> Option<String> {
        self.layer.peer_subject_dn()
    }
}

impl Read for TlsStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.handshake()?;
        loop {
            let p = self.layer.plaintext();
            if !p.is_empty() {
                let n = p.len().min(out.len());
                out[..n].copy_from_slice(&p[..n]);
                self.layer.consume_plaintext(n);
                return Ok(n);
            }
            if self.layer.peer_closed() {
                return Ok(0);
            }
            if !self.pull()? {
                return Ok(0);
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.handshake()?;
        let mut out = vec![0u8; self.layer.encrypted_len(data.len())];
        let n = self.layer.encrypt(data, &mut out).map_err(tls_error)?;
        self.sock.write_all(&out[..n])?;
        self.sent.extend_from_slice(&out[..n]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}
