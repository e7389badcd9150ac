//! Greeting, client flags, option headers, option reply headers, and the EXPORT_NAME reply.

use super::*;

/// The newstyle greeting: `NBDMAGIC, IHAVEOPT, u16 handshake flags` (18 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GreetingRepr {
    /// The server's handshake flags.
    pub flags: HandshakeFlags,
}

/// What the first bytes from a server turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ServerHello {
    /// A newstyle greeting.
    Newstyle(GreetingRepr),
    /// An oldstyle greeting (no option haggling, no TLS possible).
    Oldstyle,
}

impl GreetingRepr {
    /// Length on the wire.
    pub const LEN: usize = 18;

    /// Parses a greeting (or recognises an oldstyle one from its first 16 bytes).
    pub fn parse(buf: &[u8]) -> Result<Option<ServerHello>, Malformed> {
        let mut r = Reader::new(buf);
        let (Some(magic), Some(second)) = (r.u64(), r.u64()) else {
            return Ok(None);
        };
        if magic != NBDMAGIC {
            return Err(Malformed::BadMagic);
        }
        match second {
            IHAVEOPT => Ok(r.u16().map(|flags| {
                ServerHello::Newstyle(Self {
                    flags: HandshakeFlags::from_bits_retain(flags),
                })
            })),
            CLISERV_MAGIC => Ok(Some(ServerHello::Oldstyle)),
            _ => Err(Malformed::BadMagic),
        }
    }

    /// Emits the greeting.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::LEN)?;
        w.u64(NBDMAGIC).u64(IHAVEOPT).u16(self.flags.bits());
        Ok(w.len())
    }
}

/// The client's 32-bit flags answer to the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientFlagsRepr {
    /// The raw flags (unknown bits are kept so the server can refuse them).
    pub flags: ClientFlags,
}

impl ClientFlagsRepr {
    /// Length on the wire.
    pub const LEN: usize = 4;

    /// Parses the client flags.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        Reader::new(buf).u32().map(|f| Self {
            flags: ClientFlags::from_bits_retain(f),
        })
    }

    /// Emits the client flags.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::LEN)?;
        w.u32(self.flags.bits());
        Ok(w.len())
    }
}

/// An option request header: `IHAVEOPT, u32 option, u32 length` (16 bytes); `length` bytes of
/// option data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OptionHeaderRepr {
    /// The option.
    pub option: OptionType,
    /// Length of the option data.
    pub length: u32,
}

impl OptionHeaderRepr {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// Parses an option header.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, Malformed> {
        let mut r = Reader::new(buf);
        let (Some(magic), Some(option), Some(length)) = (r.u64(), r.u32(), r.u32()) else {
            return Ok(None);
        };
        if magic != IHAVEOPT {
            return Err(Malformed::BadMagic);
        }
        Ok(Some(Self {
            option: option.into(),
            length,
        }))
    }

    /// Emits an option header.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::LEN)?;
        w.u64(IHAVEOPT).u32(self.option.into()).u32(self.length);
        Ok(w.len())
    }
}

/// An option reply header: `magic, u32 option, u32 reply type, u32 length` (20 bytes); `length`
/// bytes of reply data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OptionReplyHeaderRepr {
    /// The option this replies to.
    pub option: OptionType,
    /// The reply type.
    pub reply: ReplyType,
    /// Length of the reply data.
    pub length: u32,
}

impl OptionReplyHeaderRepr {
    /// Length on the wire.
    pub const LEN: usize = 20;

    /// Parses an option reply header.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, Malformed> {
        let mut r = Reader::new(buf);
        let (Some(magic), Some(option), Some(reply), Some(length)) =
            (r.u64(), r.u32(), r.u32(), r.u32())
        else {
            return Ok(None);
        };
        if magic != OPTION_REPLY_MAGIC {
            return Err(Malformed::BadMagic);
        }
        Ok(Some(Self {
            option: option.into(),
            reply: reply.into(),
            length,
        }))
    }

    /// Emits an option reply header.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::LEN)?;
        w.u64(OPTION_REPLY_MAGIC)
            .u32(self.option.into())
            .u32(self.reply.into())
            .u32(self.length);
        Ok(w.len())
    }
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`: `u64 size, u16 flags` and, unless both sides
/// agreed on `NO_ZEROES`, 124 zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExportNameReplyRepr {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
    /// Whether the 124 zero bytes follow.
    pub zeroes: bool,
}

impl ExportNameReplyRepr {
    /// Length without the zero padding.
    pub const SHORT_LEN: usize = 10;
    /// Length with the zero padding.
    pub const LONG_LEN: usize = 134;

    /// Bytes on the wire.
    pub fn buffer_len(&self) -> usize {
        if self.zeroes {
            Self::LONG_LEN
        } else {
            Self::SHORT_LEN
        }
    }

    /// Parses the reply; `zeroes` says whether padding is expected.
    pub fn parse(buf: &[u8], zeroes: bool) -> Option<Self> {
        let len = if zeroes {
            Self::LONG_LEN
        } else {
            Self::SHORT_LEN
        };
        if buf.len() < len {
            return None;
        }
        let mut r = Reader::new(buf);
        Some(Self {
            size: r.u64()?,
            flags: TransmissionFlags::from_bits_retain(r.u16()?),
            zeroes,
        })
    }

    /// Emits the reply.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, self.buffer_len())?;
        w.u64(self.size).u16(self.flags.bits());
        if self.zeroes {
            w.zeroes(124);
        }
        Ok(w.len())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    // proto.md: "S: 64 bits, 0x4e42444d41474943 (ASCII 'NBDMAGIC'); S: 64 bits, 0x49484156454F5054
    // (ASCII 'IHAVEOPT'); S: 16 bits, handshake flags"
    static GREETING_BYTES: [u8; 18] = *b"NBDMAGICIHAVEOPT\x00\x03";
    // An NBD_OPT_STARTTLS request with no data, exactly as in the 2014 STARTTLS thread (seed 002).
    static STARTTLS_BYTES: [u8; 16] = *b"IHAVEOPT\x00\x00\x00\x05\x00\x00\x00\x00";
    // The ACK to it: 0x3e889045565a9, 0x5, 0x1 (REP_ACK), 0x0.
    static STARTTLS_ACK_BYTES: [u8; 20] = [
        0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0,
    ];

    #[test]
    fn greeting_vector() {
        let g = GreetingRepr {
            flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES,
        };
        let mut buf = [0u8; 18];
        assert_eq!(g.emit(&mut buf), Ok(18));
        assert_eq!(buf, GREETING_BYTES);
        assert_eq!(
            GreetingRepr::parse(&GREETING_BYTES),
            Ok(Some(ServerHello::Newstyle(g)))
        );
        for cut in 0..18 {
            assert_eq!(GreetingRepr::parse(&GREETING_BYTES[..cut]), Ok(None));
        }
        assert_eq!(
            GreetingRepr::parse(b"NBDMAGIX IHAVEOPT\0\0"),
            Err(Malformed::BadMagic)
        );
        let mut old = [0u8; 16];
        old[..8].copy_from_slice(b"NBDMAGIC");
        old[8..].copy_from_slice(&CLISERV_MAGIC.to_be_bytes());
        assert_eq!(GreetingRepr::parse(&old), Ok(Some(ServerHello::Oldstyle)));
        assert_eq!(
            g.emit(&mut [0u8; 17]),
            Err(InsufficientSize { required: 18 })
        );
    }

    #[test]
    fn starttls_vectors() {
        let h = OptionHeaderRepr {
            option: OptionType::StartTls,
            length: 0,
        };
        let mut buf = [0u8; 16];
        h.emit(&mut buf).unwrap();
        assert_eq!(buf, STARTTLS_BYTES);
        assert_eq!(OptionHeaderRepr::parse(&STARTTLS_BYTES), Ok(Some(h)));
        let ack = OptionReplyHeaderRepr {
            option: OptionType::StartTls,
            reply: ReplyType::Ack,
            length: 0,
        };
        let mut buf = [0u8; 20];
        ack.emit(&mut buf).unwrap();
        assert_eq!(buf, STARTTLS_ACK_BYTES);
        assert_eq!(
            OptionReplyHeaderRepr::parse(&STARTTLS_ACK_BYTES),
            Ok(Some(ack))
        );
    }

    #[test]
    fn export_name_reply_padding() {
        for zeroes in [false, true] {
            let r = ExportNameReplyRepr {
                size: 0x1234_5678_9abc,
                flags: TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY,
                zeroes,
            };
            let mut buf = [0xAAu8; 134];
            let n = r.emit(&mut buf).unwrap();
            assert_eq!(n, r.buffer_len());
            assert_eq!(
                &buf[..10],
                &[0, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0, 3]
            );
            assert!(buf[10..n].iter().all(|&b| b == 0));
            assert_eq!(ExportNameReplyRepr::parse(&buf[..n], zeroes), Some(r));
            assert_eq!(ExportNameReplyRepr::parse(&buf[..n - 1], zeroes), None);
        }
    }
}
