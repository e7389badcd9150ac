//! The handshake: the version exchange, the security type, VeNCrypt (version, sub-type, the
//! step into TLS), VNC and Plain authentication with the application's decision, and
//! ClientInit/ServerInit. Each `on_*` handler is one phase of [`Phase`]: it consumes one unit of
//! input, queues the answer and moves to the next phase right then.

use super::*;

impl Server {
    // ---------------------------------------------------------------- commands

    /// The TLS layer finished its handshake (and verified the client certificate if configured):
    /// authentication continues over TLS.
    pub fn tls_established(&mut self) -> Result<(), CommandError> {
        let Phase::AwaitTls(sub) = self.phase else {
            return Err(CommandError::InvalidState);
        };
        match sub.sub_auth() {
            Some(SubAuth::None) => self.auth_success(),
            Some(SubAuth::Vnc) => self.send_challenge(),
            Some(SubAuth::Plain) => {
                self.phase = Phase::PlainCredentials;
                Ok(())
            }
            None => Err(CommandError::InvalidState),
        }
    }

    /// Accepts the credentials of the last [`Event::VncAuth`] / [`Event::PlainAuth`].
    pub fn accept_auth(&mut self) -> Result<(), CommandError> {
        if self.phase != Phase::AuthDecision {
            return Err(CommandError::InvalidState);
        }
        self.auth_success()
    }

    /// Rejects the credentials: after the configured delay the client gets a failed
    /// SecurityResult (with `reason` in RFB 3.8) and the connection closes.
    pub fn reject_auth(&mut self, reason: &'static str) -> Result<(), CommandError> {
        if self.phase != Phase::AuthDecision {
            return Err(CommandError::InvalidState);
        }
        self.fail_reason = reason;
        self.phase = Phase::Closing;
        let delay = self.config.auth_failure_delay;
        self.push_event(Event::AuthFailed { delay });
        if delay.is_zero() {
            self.release_failure();
        } else {
            self.fail_hold = Some(FailHold::Unarmed);
        }
        Ok(())
    }

    /// Answers ClientInit: the framebuffer size, its native pixel format and the desktop name
    /// (at most 200 bytes; UTF-8 recommended).
    pub fn server_init(
        &mut self,
        width: u16,
        height: u16,
        format: PixelFormat,
        name: &[u8],
    ) -> Result<(), CommandError> {
        if self.phase != Phase::ServerInit {
            return Err(CommandError::InvalidState);
        }
        if !format.is_valid() || !format.true_colour || name.len() > 200 {
            return Err(CommandError::InvalidArgument);
        }
        let repr = ServerInitRepr {
            width,
            height,
            format,
            name_len: name.len() as u32,
        };
        self.out.push(ServerInitRepr::LEN + name.len(), |b| {
            repr.emit(b);
            b[ServerInitRepr::LEN..].copy_from_slice(name);
        })?;
        self.width = width;
        self.height = height;
        self.native = format;
        self.client_format = format;
        self.phase = Phase::Normal;
        self.deadline = None;
        Ok(())
    }

    // ---------------------------------------------------------------- input

    /// The client's ProtocolVersion: the security types offered (3.3: the one the server picks), or a refusal.
    pub(super) fn on_version<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let v = complete_or_wait!(
            ProtocolVersionRepr::parse(input),
            malformed => P::MalformedVersion
        );
        match Version::from_numbers(v.major, v.minor) {
            None => {
                self.version = Version::V3_3;
                self.refuse(REASON_VERSION);
                return Err(Error::Protocol(ProtocolError::UnsupportedVersion));
            }
            Some(cv) => self.version = cv.min(self.config.max_version),
        }
        debug!("rfb server: version 3.{}", self.version.minor());
        if let Some(reason) = self.config.refuse_with {
            self.refuse(reason);
        } else if self.version == Version::V3_3 {
            // The server picks: only None and VncAuth exist in 3.3.
            let pick = self
                .config
                .security_types
                .iter()
                .copied()
                .find(|t| matches!(t, SecurityType::None | SecurityType::VncAuth));
            match pick {
                Some(t) => {
                    self.out
                        .push_reserved(4, |b| put32(b, 0, u32::from(u8::from(t))));
                    self.choose(t)?;
                }
                None => self.refuse(REASON_NO_TYPES),
            }
        } else if self.config.security_types.is_empty() {
            self.refuse(REASON_NO_TYPES);
        } else {
            let mut types = [0u8; 4];
            let n = self.config.security_types.len();
            for (d, t) in types.iter_mut().zip(self.config.security_types.iter()) {
                *d = u8::from(*t);
            }
            let r = SecurityTypesRepr { types: &types[..n] };
            self.out.push_reserved(r.buffer_len(), |b| r.emit(b));
            self.phase = Phase::SecurityChoice;
        }
        Ok((ProtocolVersionRepr::LEN, None))
    }

    /// The client's security type (3.7+); one that was not offered fails the connection (CVE-2006-2369).
    pub(super) fn on_security_choice<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        let Some(&c) = input.first() else {
            return Ok((0, None));
        };
        let t = SecurityType::from(c);
        if !self.config.security_types.contains(&t) {
            debug!("rfb server: client chose unoffered security type {}", c);
            self.queue_security_failure(REASON_NOT_OFFERED);
            self.phase = Phase::Closing;
            return Err(Error::Protocol(ProtocolError::SecurityTypeNotOffered));
        }
        self.choose(t)?;
        Ok((1, None))
    }

    /// The answer to the VNC challenge: the application decides ([`Event::VncAuth`]).
    pub(super) fn on_vnc_response<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        if input.len() < CHALLENGE_LEN {
            return Ok((0, None));
        }
        let mut response = [0u8; CHALLENGE_LEN];
        response.copy_from_slice(&input[..CHALLENGE_LEN]);
        self.phase = Phase::AuthDecision;
        self.push_event(Event::VncAuth {
            challenge: self.challenge,
            response,
        });
        Ok((CHALLENGE_LEN, None))
    }

    /// The client's VeNCrypt version (0.2 only): the sub-types offered.
    pub(super) fn on_vencrypt_version<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let v = complete_or_wait!(
            VencryptVersionRepr::parse(input),
            malformed => P::MalformedVencrypt
        );
        if v != VencryptVersionRepr::V0_2 {
            let _ = self.out.push(1, |b| b[0] = vencrypt_ack::VERSION_REFUSED);
            self.phase = Phase::Closing;
            return Err(Error::Protocol(ProtocolError::VencryptVersion));
        }
        let subs = self.config.vencrypt_subtypes.clone();
        let n = VencryptSubtypesRepr::buffer_len_for(subs.len());
        self.out.push_reserved(1 + n, |b| {
            b[0] = vencrypt_ack::VERSION_OK;
            VencryptSubtypesRepr::emit_list(&subs, &mut b[1..]);
        });
        self.phase = Phase::VencryptSubtype;
        Ok((2, None))
    }

    /// The client's VeNCrypt sub-type: its ack, then TLS ([`Event::StartTls`]) or the sub-authentication.
    pub(super) fn on_vencrypt_subtype<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        if input.len() < 4 {
            return Ok((0, None));
        }
        let sub = VencryptSubtype::from(be32(input, 0));
        if !self.config.vencrypt_subtypes.contains(&sub) {
            if sub.uses_tls() {
                let _ = self.out.push(1, |b| b[0] = vencrypt_ack::SUBTYPE_REFUSED);
            }
            self.phase = Phase::Closing;
            return Err(Error::Protocol(ProtocolError::SubtypeNotOffered));
        }
        self.method.subtype = Some(sub);
        debug!("rfb server: VeNCrypt sub-type {}", u32::from(sub));
        if sub.uses_tls() {
            self.out
                .push_reserved(1, |b| b[0] = vencrypt_ack::SUBTYPE_OK);
            self.phase = Phase::AwaitTls(sub);
            self.push_event(Event::StartTls);
        } else {
            match sub.sub_auth() {
                Some(SubAuth::None) => reserved(self.auth_success()),
                Some(SubAuth::Vnc) => reserved(self.send_challenge()),
                _ => self.phase = Phase::PlainCredentials,
            }
        }
        Ok((4, None))
    }

    /// Plain credentials, lent to the application to decide ([`Event::PlainAuth`]).
    pub(super) fn on_plain_credentials<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let (u, p) = complete_or_wait!(
            PlainCredentialsRepr::parse_lengths(input),
            malformed => P::MalformedVencrypt
        );
        if u > self.config.limits.max_username || p > self.config.limits.max_password {
            self.queue_security_failure(REASON_CREDENTIALS);
            self.phase = Phase::Closing;
            return Err(Error::Protocol(ProtocolError::CredentialsTooLong));
        }
        let c = complete_or_wait!(
            PlainCredentialsRepr::parse(input),
            malformed => P::MalformedVencrypt
        );
        self.phase = Phase::AuthDecision;
        self.push_event(Event::PlainAuth);
        Ok((
            c.buffer_len(),
            Some(Payload::PlainCredentials {
                username: c.username,
                password: c.password,
            }),
        ))
    }

    /// ClientInit: the application answers with [`Server::server_init`].
    pub(super) fn on_client_init<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let m = complete_or_wait!(ClientInitRepr::parse(input), malformed => P::Malformed);
        self.phase = Phase::ServerInit;
        self.push_event(Event::ClientInit { shared: m.shared });
        Ok((ClientInitRepr::LEN, None))
    }

    // ---------------------------------------------------------------- helpers

    /// Queues a connection failure before security is agreed (3.3: U32 0; 3.7+: U8 0) plus reason.
    pub(super) fn refuse(&mut self, reason: &'static str) {
        let r = FailureReasonRepr {
            reason: reason.as_bytes(),
        };
        let lead = if self.version == Version::V3_3 { 4 } else { 1 };
        let _ = self.out.push(lead + r.buffer_len(), |b| {
            b[..lead].fill(0);
            r.emit(&mut b[lead..]);
        });
        self.phase = Phase::Closing;
    }

    /// Queues a failed SecurityResult (reason only in 3.8).
    pub(super) fn queue_security_failure(&mut self, reason: &str) {
        let r = FailureReasonRepr {
            reason: reason.as_bytes(),
        };
        let with_reason = self.version >= Version::V3_8;
        let n = 4 + if with_reason { r.buffer_len() } else { 0 };
        let _ = self.out.push(n, |b| {
            put32(b, 0, u32::from(SecurityResult::Failed));
            if with_reason {
                r.emit(&mut b[4..]);
            }
        });
    }

    pub(super) fn release_failure(&mut self) {
        self.fail_hold = None;
        let reason = self.fail_reason;
        self.queue_security_failure(reason);
        self.phase = Phase::Closing;
    }

    pub(super) fn send_challenge(&mut self) -> Result<(), CommandError> {
        let c = self.challenge;
        self.out.push(CHALLENGE_LEN, |b| b.copy_from_slice(&c))?;
        self.phase = Phase::VncResponse;
        Ok(())
    }

    pub(super) fn auth_success(&mut self) -> Result<(), CommandError> {
        // RFB 3.3/3.7 skip SecurityResult for type None only (TigerVNC SConnection rule).
        let skip = self.version < Version::V3_8 && self.method.security_type == SecurityType::None;
        if !skip {
            self.out
                .push(4, |b| put32(b, 0, u32::from(SecurityResult::Ok)))?;
        }
        self.phase = Phase::ClientInit;
        let m = self.method;
        self.push_event(Event::Authenticated(m));
        Ok(())
    }

    pub(super) fn choose(&mut self, t: SecurityType) -> Result<(), Error> {
        self.method = AuthMethod {
            security_type: t,
            subtype: None,
        };
        match t {
            SecurityType::None => reserved(self.auth_success()),
            SecurityType::VncAuth => reserved(self.send_challenge()),
            SecurityType::VeNCrypt => {
                let v = VencryptVersionRepr::V0_2;
                self.out.push_reserved(2, |b| v.emit(b));
                self.phase = Phase::VencryptVersion;
            }
            _ => return Err(Error::Protocol(ProtocolError::SecurityTypeNotOffered)),
        }
        Ok(())
    }
}
