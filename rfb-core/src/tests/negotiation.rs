//! Golden bytes per version and security type; full sessions for every security type.

use super::harness::*;
use crate::client::{self, Client, ClientConfig};
use crate::server::{self, Server, ServerConfig};
use crate::wire::*;
use crate::{Error, Instant, ProtocolError};

fn server(types: &[SecurityType], subs: &[VencryptSubtype], max: Version) -> Server {
    let mut c = ServerConfig::with_security(types, subs);
    c.max_version = max;
    c.auth_failure_delay = crate::Duration::ZERO;
    Server::new(c, Instant::ZERO, CHALLENGE)
}

/// Drains everything the server wants to send.
fn out(s: &mut Server) -> Vec<u8> {
    let mut v = Vec::new();
    let mut buf = [0u8; 512];
    while let Some(t) = s.poll_transmit(&mut buf).unwrap() {
        v.extend_from_slice(&buf[..t.len]);
    }
    v
}

fn feed(s: &mut Server, mut input: &[u8]) -> Result<(), Error> {
    while !input.is_empty() {
        let p = s.handle_input(input)?;
        if p.consumed == 0 {
            break;
        }
        input = &input[p.consumed..];
        while s.poll_event().is_some() {}
    }
    Ok(())
}

#[test]
fn version_strings() {
    let mut s = server(&[SecurityType::None], &[], Version::V3_8);
    assert_eq!(out(&mut s), b"RFB 003.008\n");
    let mut s = server(&[SecurityType::None], &[], Version::V3_3);
    assert_eq!(out(&mut s), b"RFB 003.003\n");
}

#[test]
fn none_v38_sends_security_result_ok() {
    let mut s = server(&[SecurityType::None], &[], Version::V3_8);
    out(&mut s);
    feed(&mut s, b"RFB 003.008\n").unwrap();
    assert_eq!(out(&mut s), [1, 1]);
    feed(&mut s, &[1]).unwrap();
    // None in 3.8: SecurityResult OK as a real U32 0 (oxide/rfb wrote something else).
    assert_eq!(out(&mut s), [0, 0, 0, 0]);
}

#[test]
fn none_v37_skips_security_result() {
    let mut s = server(&[SecurityType::None], &[], Version::V3_8);
    out(&mut s);
    feed(&mut s, b"RFB 003.007\n").unwrap();
    assert_eq!(out(&mut s), [1, 1]);
    feed(&mut s, &[1]).unwrap();
    assert_eq!(out(&mut s), b"");
    feed(&mut s, &[1]).unwrap(); // ClientInit is next
    assert_eq!(s.state(), server::State::AwaitingApplication);
}

#[test]
fn v33_server_picks_type_and_none_skips_result() {
    let mut s = server(&[SecurityType::None], &[], Version::V3_8);
    out(&mut s);
    feed(&mut s, b"RFB 003.003\n").unwrap();
    assert_eq!(out(&mut s), [0, 0, 0, 1]);
    assert_eq!(s.version(), Version::V3_3);
}

#[test]
fn v33_vnc_auth_failure_has_no_reason() {
    let mut s = server(&[SecurityType::VncAuth], &[], Version::V3_8);
    out(&mut s);
    feed(&mut s, b"RFB 003.003\n").unwrap();
    let mut expect = std::vec![0, 0, 0, 2];
    expect.extend_from_slice(&CHALLENGE);
    assert_eq!(out(&mut s), expect);
    feed(&mut s, &[0u8; 16]).unwrap();
    s.reject_auth("Authentication failed").unwrap();
    assert_eq!(out(&mut s), [0, 0, 0, 1]);
}

#[test]
fn v38_failure_has_length_and_reason() {
    let mut s = server(&[SecurityType::VncAuth], &[], Version::V3_8);
    out(&mut s);
    feed(&mut s, b"RFB 003.008\n").unwrap();
    assert_eq!(out(&mut s), [1, 2]);
    feed(&mut s, &[2]).unwrap();
    assert_eq!(out(&mut s), CHALLENGE);
    feed(&mut s, &response()).unwrap();
    s.reject_auth("Authentication failed").unwrap();
    let mut expect = std::vec![0, 0, 0, 1, 0, 0, 0, 21];
    expect.extend_from_slice(b"Authentication failed");
    assert_eq!(out(&mut s), expect);
    assert!(matches!(
        s.poll_event(),
        Some(server::Event::AuthFailed { .. })
    ));
    assert_eq!(s.poll_event(), Some(server::Event::Closed));
}

#[test]
fn v37_failure_has_no_reason() {
    let mut s = server(&[SecurityType::VncAuth], &[], Version::V3_8);
    out(&mut s);
    feed(&mut s, b"RFB 003.007\n").unwrap();
    out(&mut s);
    feed(&mut s, &[2]).unwrap();
    out(&mut s);
    feed(&mut s, &[0u8; 16]).unwrap();
    s.reject_auth("nope").unwrap();
    assert_eq!(out(&mut s), [0, 0, 0, 1]);
}

#[test]
fn vnc_auth_ok_sends_result_in_every_version() {
    for (v, ver) in [
        (b"RFB 003.003\n", Version::V3_3),
        (b"RFB 003.007\n", Version::V3_7),
        (b"RFB 003.008\n", Version::V3_8),
    ] {
        let mut s = server(&[SecurityType::VncAuth], &[], Version::V3_8);
        out(&mut s);
        feed(&mut s, v).unwrap();
        out(&mut s);
        if ver != Version::V3_3 {
            feed(&mut s, &[2]).unwrap();
            out(&mut s);
        }
        feed(&mut s, &response()).unwrap();
        s.accept_auth().unwrap();
        assert_eq!(out(&mut s), [0, 0, 0, 0], "{ver:?}");
    }
}

#[test]
fn version_mapping_like_tigervnc() {
    for (client, expect) in [
        (&b"RFB 003.004\n"[..], Version::V3_3),
        (b"RFB 003.005\n", Version::V3_3),
        (b"RFB 003.006\n", Version::V3_3),
        (b"RFB 003.007\n", Version::V3_7),
        (b"RFB 003.009\n", Version::V3_8),
        (b"RFB 003.889\n", Version::V3_8),
        (b"RFB 004.001\n", Version::V3_8),
    ] {
        let mut s = server(&[SecurityType::None], &[], Version::V3_8);
        out(&mut s);
        feed(&mut s, client).unwrap();
        assert_eq!(s.version(), expect);
    }
    // Below 3.3: refused with a 3.3-style failure and reason.
    let mut s = server(&[SecurityType::None], &[], Version::V3_8);
    out(&mut s);
    assert_eq!(
        feed(&mut s, b"RFB 002.000\n"),
        Err(Error::Protocol(ProtocolError::UnsupportedVersion))
    );
    let o = out(&mut s);
    assert_eq!(&o[..4], [0, 0, 0, 0]);
    assert_eq!(&o[8..], b"Unsupported RFB protocol version");
    // Garbage is rejected as soon as it is seen.
    let mut s = server(&[SecurityType::None], &[], Version::V3_8);
    assert_eq!(
        feed(&mut s, b"GET / HTTP/1.1\r\n"),
        Err(Error::Protocol(ProtocolError::MalformedVersion))
    );
}

#[test]
fn v33_refuses_vencrypt_only_config_with_reason() {
    let mut s = server(
        &[SecurityType::VeNCrypt],
        &[VencryptSubtype::X509Vnc],
        Version::V3_8,
    );
    out(&mut s);
    feed(&mut s, b"RFB 003.003\n").unwrap();
    let o = out(&mut s);
    assert_eq!(&o[..8], [0, 0, 0, 0, 0, 0, 0, 27]);
    assert_eq!(&o[8..], b"No supported security types");
    assert_eq!(s.poll_event(), Some(server::Event::Closed));
}

#[test]
fn refusal_reason_in_every_version() {
    let reason = "too many connections";
    for (client, lead) in [
        (&b"RFB 003.003\n"[..], &[0u8, 0, 0, 0][..]),
        (b"RFB 003.007\n", &[0u8][..]),
        (b"RFB 003.008\n", &[0u8][..]),
    ] {
        let mut c = ServerConfig::with_security(&[SecurityType::None], &[]);
        c.refuse_with = Some(reason);
        let mut s = Server::new(c, Instant::ZERO, CHALLENGE);
        assert_eq!(out(&mut s), b"RFB 003.008\n");
        feed(&mut s, client).unwrap();
        let o = out(&mut s);
        let (head, rest) = o.split_at(lead.len());
        assert_eq!(head, lead, "{client:?}");
        assert_eq!(&rest[..4], (reason.len() as u32).to_be_bytes());
        assert_eq!(&rest[4..], reason.as_bytes());
        assert_eq!(s.poll_event(), Some(server::Event::Closed));
        // Nothing more is read: the connection is over.
        assert!(matches!(
            s.state(),
            server::State::Closed | server::State::Closing
        ));
    }
}

#[test]
fn client_picks_highest_common_version() {
    let mut c = Client::new(ClientConfig::default(), Instant::ZERO);
    let p = c.handle_input(b"RFB 003.889\n").unwrap();
    assert_eq!(p.consumed, 12);
    let mut buf = [0u8; 64];
    let t = c.poll_transmit(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..t.len], b"RFB 003.008\n");
    let mut c = Client::new(ClientConfig::default(), Instant::ZERO);
    let _ = c.handle_input(b"RFB 003.005\n").unwrap();
    let t = c.poll_transmit(&mut buf).unwrap().unwrap();
    assert_eq!(&buf[..t.len], b"RFB 003.003\n");
}

#[test]
fn client_tolerates_qemu_33_refusal_without_reason() {
    // QEMU on 3.3 with a VeNCrypt-only config writes U32 0 and closes.
    let mut c = Client::new(ClientConfig::default(), Instant::ZERO);
    let _ = c.handle_input(b"RFB 003.003\n").unwrap();
    let p = c.handle_input(&[0, 0, 0, 0]).unwrap();
    assert_eq!(p.consumed, 4);
    assert_eq!(c.handle_eof(), Err(Error::AuthenticationFailed));
    assert_eq!(
        c.poll_event(),
        Some(client::Event::SecurityFailed { reason: b"" })
    );
}

#[test]
fn client_strips_nuls_and_caps_reason() {
    let mut c = Client::new(
        ClientConfig::with_security(&[SecurityType::None], &[]),
        Instant::ZERO,
    );
    let _ = c.handle_input(b"RFB 003.008\n").unwrap();
    // QEMU's reason length includes the trailing NUL.
    let mut msg = std::vec![0u8];
    msg.extend_from_slice(&22u32.to_be_bytes());
    msg.extend_from_slice(b"Authentication failed\0");
    let mut rest = &msg[..];
    let err = loop {
        match c.handle_input(rest) {
            Ok(p) => rest = &rest[p.consumed..],
            Err(e) => break e,
        }
    };
    assert_eq!(err, Error::AuthenticationFailed);
    assert_eq!(
        c.poll_event(),
        Some(client::Event::SecurityFailed {
            reason: b"Authentication failed"
        })
    );

    // A 1000-byte reason is capped at 128 bytes.
    let mut c = Client::new(
        ClientConfig::with_security(&[SecurityType::None], &[]),
        Instant::ZERO,
    );
    let _ = c.handle_input(b"RFB 003.008\n").unwrap();
    let mut msg = std::vec![0u8];
    msg.extend_from_slice(&1000u32.to_be_bytes());
    msg.extend(std::iter::repeat_n(b'x', 1000));
    let mut rest = &msg[..];
    while let Ok(p) = c.handle_input(rest) {
        rest = &rest[p.consumed..];
    }
    match c.poll_event() {
        Some(client::Event::SecurityFailed { reason }) => assert_eq!(reason.len(), 128),
        e => panic!("{e:?}"),
    }
}

#[test]
fn every_security_type_end_to_end() {
    for auth in [
        Auth::None,
        Auth::Vnc,
        Auth::VencryptPlain,
        Auth::VencryptNone,
        Auth::VencryptVnc,
        Auth::X509None,
        Auth::X509Vnc,
        Auth::X509Plain,
    ] {
        for version in [Version::V3_3, Version::V3_7, Version::V3_8] {
            let uses_vencrypt = !matches!(auth, Auth::None | Auth::Vnc);
            let (mut sc, mut cc) = auth.configs();
            sc.max_version = version;
            cc.max_version = version;
            let fb = ServerFb::pattern(40, 30, PixelFormat::RGB888, 1);
            let mut p = Pair::with_configs(sc, cc, fb, PixelFormat::RGB888);
            p.run();
            if uses_vencrypt && version == Version::V3_3 {
                assert!(!p.client_ready, "{auth:?} cannot run on 3.3");
                assert!(
                    p.client_events.iter().any(|e| e.contains("SecurityFailed")),
                    "{auth:?}: {:?}",
                    p.client_events
                );
                continue;
            }
            assert!(
                p.client_ready,
                "{auth:?} {version:?}: {:?} / {:?}",
                p.client_events, p.server_events
            );
            assert!(p.server_init_done);
            let tls = matches!(auth, Auth::X509None | Auth::X509Vnc | Auth::X509Plain);
            assert_eq!(
                p.client_events.iter().any(|e| e == "StartTls"),
                tls,
                "{auth:?}"
            );
            assert_eq!(
                p.server_events.iter().any(|e| e == "StartTls"),
                tls,
                "{auth:?}"
            );
        }
    }
}

#[test]
fn wrong_password_and_wrong_plain_credentials_fail() {
    for auth in [Auth::Vnc, Auth::X509Vnc] {
        let fb = ServerFb::pattern(8, 8, PixelFormat::RGB888, 1);
        let mut p = Pair::new(auth, fb, PixelFormat::RGB888);
        p.password = b"wrong";
        p.run();
        assert!(!p.client_ready);
        assert!(
            p.client_events
                .iter()
                .any(|e| e.contains("SecurityFailed { reason: [65, 117")),
            "{:?}",
            p.client_events
        );
    }
    let fb = ServerFb::pattern(8, 8, PixelFormat::RGB888, 1);
    let mut p = Pair::new(Auth::X509Plain, fb, PixelFormat::RGB888);
    p.plain = (b"user", b"bad");
    p.run();
    assert!(!p.client_ready);
    assert!(p.server_events.iter().any(|e| e.starts_with("AuthFailed")));
}

#[test]
fn client_reports_offered_types_when_none_acceptable() {
    let mut s = server(&[SecurityType::VncAuth], &[], Version::V3_8);
    let mut c = Client::new(
        ClientConfig::with_security(&[SecurityType::None], &[]),
        Instant::ZERO,
    );
    let hello = out(&mut s);
    let _ = c.handle_input(&hello).unwrap();
    let mut buf = [0u8; 64];
    let t = c.poll_transmit(&mut buf).unwrap().unwrap();
    feed(&mut s, &buf[..t.len]).unwrap();
    let list = out(&mut s);
    assert_eq!(
        c.handle_input(&list),
        Err(Error::Protocol(ProtocolError::NoAcceptableSecurityType))
    );
    assert_eq!(
        c.poll_event(),
        Some(client::Event::NoCommonSecurity {
            types: &[2],
            subtypes: &[]
        })
    );
}

#[test]
fn client_refuses_anonymous_tls_and_type_18() {
    // Server offers type 18 (anonymous TLS) and VeNCrypt with only TLS* sub-types.
    let mut c = Client::new(ClientConfig::default(), Instant::ZERO);
    let _ = c.handle_input(b"RFB 003.008\n").unwrap();
    assert_eq!(
        c.handle_input(&[1, 18]),
        Err(Error::Protocol(ProtocolError::AnonymousTlsUnsupported))
    );
    let msg = std::format!("{}", ProtocolError::AnonymousTlsUnsupported);
    assert!(msg.contains("rustls"), "{msg}");
    let mut c = Client::new(ClientConfig::default(), Instant::ZERO);
    let _ = c.handle_input(b"RFB 003.008\n").unwrap();
    let p = c.handle_input(&[2, 18, 19]).unwrap();
    assert_eq!(p.consumed, 3);
    let mut buf = [0u8; 64];
    let _ = c.poll_transmit(&mut buf).unwrap().unwrap(); // version
    let t = c.poll_transmit(&mut buf).unwrap();
    assert!(t.is_none() || buf[t.unwrap().len - 1] == 19);
    let mut rest: &[u8] = &[0, 2, 0, 3, 0, 0, 1, 1, 0, 0, 1, 2, 0, 0, 1, 3];
    let err = loop {
        match c.handle_input(rest) {
            Ok(p) => rest = &rest[p.consumed..],
            Err(e) => break e,
        }
    };
    assert_eq!(err, Error::Protocol(ProtocolError::AnonymousTlsUnsupported));
    assert_eq!(
        c.poll_event(),
        Some(client::Event::NoCommonSecurity {
            types: &[18, 19],
            subtypes: &[257, 258, 259]
        })
    );
}

#[test]
fn server_config_refuses_anonymous_tls() {
    let c = ServerConfig::with_security(&[SecurityType::VeNCrypt], &[VencryptSubtype::TlsVnc]);
    assert_eq!(
        c.validate(),
        Err(server::ConfigError::AnonymousTls(VencryptSubtype::TlsVnc))
    );
    let msg = std::format!("{}", c.validate().unwrap_err());
    assert!(msg.contains("anonymous TLS"), "{msg}");
    let c = ServerConfig::with_security(&[SecurityType::Tls], &[]);
    assert_eq!(
        c.validate(),
        Err(server::ConfigError::UnsupportedType(SecurityType::Tls))
    );
    // Never offered even if configured.
    let mut s = server(
        &[SecurityType::VeNCrypt],
        &[VencryptSubtype::TlsNone, VencryptSubtype::X509None],
        Version::V3_8,
    );
    out(&mut s);
    feed(&mut s, b"RFB 003.008\n").unwrap();
    out(&mut s);
    feed(&mut s, &[19]).unwrap();
    assert_eq!(out(&mut s), [0, 2]);
    feed(&mut s, &[0, 2]).unwrap();
    assert_eq!(out(&mut s), [0, 1, 0, 0, 1, 4]);
}
