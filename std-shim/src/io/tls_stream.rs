//! A blocking TLS client stream (`Read + Write`) over any blocking transport, for code that is
//! not a pump session (the HTTPS virtual media): the same [`TlsLayer`] as everywhere else, so
//! the same credentials, versions and certificate checks.

use std::io::{self, Read, Write};

use tls_glue::{TlsClientConfig, TlsLayer};

/// TLS over `S`, handshake done.
pub struct TlsStream<S> {
    io: S,
    tls: TlsLayer,
    out: Vec<u8>,
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

impl<S: Read + Write> TlsStream<S> {
    /// Runs the handshake over `io`, verifying the server's certificate against `config`'s CA
    /// for `server_name` (a host name or an IP address).
    pub fn connect(io: S, config: &TlsClientConfig, server_name: &str) -> io::Result<Self> {
        let tls = TlsLayer::client(config, server_name).map_err(tls_error)?;
        let mut s = Self {
            io,
            tls,
            out: Vec::new(),
        };
        loop {
            s.send_pending()?;
            if !s.tls.is_handshaking() {
                return Ok(s);
            }
            if !s.receive()? {
                return Err(tls_error(
                    "the server closed the connection during the handshake",
                ));
            }
        }
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Writes what the layer has to send (handshake, alerts, key updates).
    fn send_pending(&mut self) -> io::Result<()> {
        while self.tls.wants_transmit() {
            let pending = self.tls.pending_transmit();
            let n = pending.len();
            self.io.write_all(pending)?;
            self.tls.transmit_done(n);
        }
        if let Some(e) = self.tls.error() {
            return Err(tls_error(e));
        }
        self.io.flush()
    }

    /// Reads once from the transport into the layer; `false` at a clean end (after the peer's
    /// `close_notify`).
    fn receive(&mut self) -> io::Result<bool> {
        let buf = self.tls.ciphertext_buffer();
        if buf.is_empty() {
            return Err(tls_error(
                self.tls
                    .error()
                    .map_or("receive buffer full".to_string(), |e| e.to_string()),
            ));
        }
        let n = loop {
            match self.io.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n == 0 {
            self.tls.handle_eof().map_err(tls_error)?;
            return Ok(false);
        }
        let r = self.tls.commit_ciphertext(n);
        // An alert telling the server why goes out before the error is reported.
        self.send_pending()?;
        r.map_err(tls_error)?;
        Ok(true)
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let plain = self.tls.plaintext();
            if !plain.is_empty() {
                let n = plain.len().min(buf.len());
                buf[..n].copy_from_slice(&plain[..n]);
                self.tls.consume_plaintext(n);
                return Ok(n);
            }
            if buf.is_empty() || self.tls.peer_closed() || !self.receive()? {
                return Ok(0);
            }
        }
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let chunk = &buf[..buf.len().min(64 * 1024)];
        self.out.resize(self.tls.encrypted_len(chunk.len()), 0);
        let n = self.tls.encrypt(chunk, &mut self.out).map_err(tls_error)?;
        self.io.write_all(&self.out[..n])?;
        Ok(chunk.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}
