//! The handshake: the version exchange, the security type (RFB 3.3's pick or the 3.7+ list),
//! VeNCrypt (version, sub-type, the step into TLS), VNC and Plain credentials, SecurityResult
//! and its reason, ClientInit and ServerInit. Each `on_*` handler is one phase of [`Phase`]: it
//! consumes one unit of input, queues the answer and moves to the next phase right then.

use super::*;

impl Client {
    // ---------------------------------------------------------------- commands

    /// The driver finished the TLS handshake **and validated the server certificate**; the
    /// sub-authentication continues over TLS.
    pub fn tls_established(&mut self) -> Result<(), CommandError> {
        let Phase::AwaitTls(sub) = self.phase else {
            return Err(CommandError::InvalidState);
        };
        self.start_sub_auth(sub);
        Ok(())
    }

    /// Answers [`Credentials::Password`] (only the first 8 bytes count).
    pub fn send_password(&mut self, password: &[u8]) -> Result<(), CommandError> {
        if self.phase != Phase::NeedPassword {
            return Err(CommandError::InvalidState);
        }
        let r = vnc_response(password, &self.challenge);
        self.out.push(CHALLENGE_LEN, |b| b.copy_from_slice(&r))?;
        self.phase = Phase::SecurityResult;
        Ok(())
    }

    /// Answers [`Credentials::Plain`]; username and password together may be 344 bytes.
    pub fn send_plain_credentials(
        &mut self,
        username: &[u8],
        password: &[u8],
    ) -> Result<(), CommandError> {
        if self.phase != Phase::NeedPlain {
            return Err(CommandError::InvalidState);
        }
        let c = PlainCredentialsRepr { username, password };
        if c.buffer_len() > self.out.free() {
            return Err(CommandError::InvalidArgument);
        }
        self.out.push(c.buffer_len(), |b| c.emit(b))?;
        self.phase = Phase::SecurityResult;
        Ok(())
    }

    // ---------------------------------------------------------------- input

    /// The server's ProtocolVersion: ours (the lower of the two) goes back.
    pub(super) fn on_version<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let v = complete_or_wait!(
            ProtocolVersionRepr::parse(input),
            malformed => P::MalformedVersion
        );
        let sv = Version::from_numbers(v.major, v.minor)
            .ok_or(Error::Protocol(P::UnsupportedVersion))?;
        self.version = sv.min(self.config.max_version);
        let r = ProtocolVersionRepr::of(self.version);
        self.out
            .push_reserved(ProtocolVersionRepr::LEN, |b| r.emit(b));
        self.phase = if self.version == Version::V3_3 {
            Phase::Security33
        } else {
            Phase::SecurityList
        };
        Ok((ProtocolVersionRepr::LEN, None))
    }

    /// RFB 3.3: the security type the server picked (0: a refusal and its reason follow).
    pub(super) fn on_security_3_3<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        if input.len() < 4 {
            return Ok((0, None));
        }
        let t = be32(input, 0);
        match t {
            0 => self.phase = Phase::ReasonLength,
            1 | 2 => {
                let t = SecurityType::from(t as u8);
                self.offered.clear();
                let _ = self.offered.push(t.into());
                if !self.config.security_types.contains(&t) {
                    self.push(Ev::NoCommon);
                    return Err(P::NoAcceptableSecurityType.into());
                }
                self.security = t;
                if t == SecurityType::None {
                    self.authenticated();
                } else {
                    self.phase = Phase::VncChallenge;
                }
            }
            _ => return Err(P::InvalidSecurityType.into()),
        }
        Ok((4, None))
    }

    /// The security types offered: the first acceptable one of ours goes back (none: a refusal follows).
    pub(super) fn on_security_list<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let list = complete_or_wait!(
            SecurityTypesRepr::parse(input),
            malformed => P::InvalidSecurityType
        );
        let n = list.buffer_len();
        if list.types.is_empty() {
            self.phase = Phase::ReasonLength;
            return Ok((n, None));
        }
        self.offered.clear();
        for &t in list.types.iter().take(16) {
            let _ = self.offered.push(t);
        }
        let choice = self.config.security_types.iter().copied().find(|t| {
            matches!(
                t,
                SecurityType::None | SecurityType::VncAuth | SecurityType::VeNCrypt
            ) && list.types.contains(&u8::from(*t))
        });
        let Some(t) = choice else {
            self.push(Ev::NoCommon);
            if list.types == [u8::from(SecurityType::Tls)] {
                return Err(P::AnonymousTlsUnsupported.into());
            }
            return Err(P::NoAcceptableSecurityType.into());
        };
        self.out.push_reserved(1, |b| b[0] = t.into());
        self.security = t;
        match t {
            SecurityType::None => {
                if self.version >= Version::V3_8 {
                    self.phase = Phase::SecurityResult;
                } else {
                    self.authenticated();
                }
            }
            SecurityType::VncAuth => self.phase = Phase::VncChallenge,
            _ => self.phase = Phase::VencryptVersion,
        }
        Ok((n, None))
    }

    /// The VNC challenge: the application gives the password ([`Event::NeedCredentials`]).
    pub(super) fn on_vnc_challenge<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        if input.len() < CHALLENGE_LEN {
            return Ok((0, None));
        }
        self.challenge.copy_from_slice(&input[..CHALLENGE_LEN]);
        self.phase = Phase::NeedPassword;
        self.push(Ev::Need(Credentials::Password));
        Ok((CHALLENGE_LEN, None))
    }

    /// The server's VeNCrypt version: ours (0.2) goes back.
    pub(super) fn on_vencrypt_version<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let v = complete_or_wait!(
            VencryptVersionRepr::parse(input),
            malformed => P::MalformedVencrypt
        );
        if (v.major, v.minor) < (0, 2) {
            return Err(P::VencryptVersion.into());
        }
        let ours = VencryptVersionRepr::V0_2;
        self.out.push_reserved(2, |b| ours.emit(b));
        self.phase = Phase::VencryptAck;
        Ok((2, None))
    }

    /// The server's answer to our VeNCrypt version.
    pub(super) fn on_vencrypt_ack<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let Some(&ack) = input.first() else {
            return Ok((0, None));
        };
        if ack != vencrypt_ack::VERSION_OK {
            return Err(P::VencryptVersion.into());
        }
        self.phase = Phase::VencryptSubtypes;
        Ok((1, None))
    }

    /// The VeNCrypt sub-types offered: the first acceptable one of ours goes back.
    pub(super) fn on_vencrypt_subtypes<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let list = complete_or_wait!(
            VencryptSubtypesRepr::parse(input),
            malformed => P::MalformedVencrypt
        );
        if list.is_empty() {
            return Err(P::MalformedVencrypt.into());
        }
        self.offered_sub.clear();
        for s in list.iter().take(8) {
            let _ = self.offered_sub.push(s.into());
        }
        let choice = self
            .config
            .vencrypt_subtypes
            .iter()
            .copied()
            .find(|s| s.is_supported() && list.iter().any(|o| o == *s));
        let Some(sub) = choice else {
            self.push(Ev::NoCommon);
            if list.iter().all(|s| s.is_anonymous_tls()) {
                return Err(P::AnonymousTlsUnsupported.into());
            }
            return Err(P::NoAcceptableSecurityType.into());
        };
        self.out.push_reserved(4, |b| put32(b, 0, sub.into()));
        self.subtype = Some(sub);
        if sub.uses_tls() {
            self.phase = Phase::VencryptTlsAck(sub);
        } else {
            self.start_sub_auth(sub);
        }
        Ok((VencryptSubtypesRepr::buffer_len_for(list.len()), None))
    }

    /// The ack of an X509 sub-type: TLS starts ([`Event::StartTls`]).
    pub(super) fn on_vencrypt_tls_ack<'i>(
        &mut self,
        input: &'i [u8],
        sub: VencryptSubtype,
    ) -> Step<'i> {
        use ProtocolError as P;
        let Some(&ack) = input.first() else {
            return Ok((0, None));
        };
        if ack != vencrypt_ack::SUBTYPE_OK {
            return Err(P::VencryptRefused.into());
        }
        self.phase = Phase::AwaitTls(sub);
        self.push(Ev::StartTls);
        Ok((1, None))
    }

    /// SecurityResult: ClientInit goes out, or a failure (3.8: with a reason).
    pub(super) fn on_security_result<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        if input.len() < 4 {
            return Ok((0, None));
        }
        match SecurityResult::from(be32(input, 0)) {
            SecurityResult::Ok => self.authenticated(),
            SecurityResult::Failed | SecurityResult::TooManyAttempts => {
                if self.version >= Version::V3_8 {
                    self.phase = Phase::ReasonLength;
                } else {
                    self.phase = Phase::Closed;
                    self.push(Ev::Failed);
                    return Err(Error::AuthenticationFailed);
                }
            }
            SecurityResult::Unknown(_) => return Err(P::InvalidSecurityResult.into()),
        }
        Ok((4, None))
    }

    /// The length of a failure reason; the reason follows as text.
    pub(super) fn on_reason_length<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        if input.len() < 4 {
            return Ok((0, None));
        }
        let len = be32(input, 0);
        if len > self.config.limits.max_string {
            return Err(P::StringTooLong.into());
        }
        self.text.clear();
        self.phase = Phase::Normal;
        self.msg = Msg::Text {
            kind: TextKind::Failure,
            remaining: len,
            after: 0,
        };
        if len == 0 {
            return self.finish_text(TextKind::Failure, 0).map(|_| (4, None));
        }
        Ok((4, None))
    }

    /// ServerInit; the desktop name follows as text.
    pub(super) fn on_server_init<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        let h = complete_or_wait!(
            ServerInitRepr::parse(input),
            malformed => P::InvalidPixelFormat
        );
        if !h.format.is_valid() {
            return Err(P::InvalidPixelFormat.into());
        }
        if h.name_len > self.config.limits.max_string {
            return Err(P::StringTooLong.into());
        }
        self.width = h.width;
        self.height = h.height;
        self.server_format = h.format;
        self.format = h.format;
        self.text.clear();
        self.phase = Phase::Normal;
        self.deadline = None;
        self.msg = Msg::Text {
            kind: TextKind::ServerInit,
            remaining: h.name_len,
            after: 0,
        };
        if h.name_len == 0 {
            self.finish_text(TextKind::ServerInit, 0)?;
        }
        Ok((ServerInitRepr::LEN, None))
    }

    // ---------------------------------------------------------------- helpers

    pub(super) fn start_sub_auth(&mut self, sub: VencryptSubtype) {
        match sub.sub_auth() {
            Some(SubAuth::None) => self.phase = Phase::SecurityResult,
            Some(SubAuth::Vnc) => self.phase = Phase::VncChallenge,
            _ => {
                self.phase = Phase::NeedPlain;
                self.push(Ev::Need(Credentials::Plain));
            }
        }
    }

    pub(super) fn authenticated(&mut self) {
        let m = ClientInitRepr {
            shared: self.config.shared,
        };
        self.out.push_reserved(ClientInitRepr::LEN, |b| m.emit(b));
        self.phase = Phase::ServerInit;
        self.push(Ev::Authenticated);
    }
}
