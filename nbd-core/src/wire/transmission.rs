//! Transmission-phase messages: requests (compact and extended), simple replies, structured and
//! extended reply chunks and their payloads.

use super::*;

/// Which header style the transmission phase uses (decided in negotiation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum HeaderStyle {
    /// 28-byte requests; 16-byte simple replies only.
    Simple,
    /// 28-byte requests; simple replies or 20-byte structured chunks.
    Structured,
    /// 32-byte requests and 32-byte reply chunks (`NBD_OPT_EXTENDED_HEADERS`).
    Extended,
}

impl HeaderStyle {
    /// Length of a request header in this style.
    pub fn request_len(self) -> usize {
        match self {
            Self::Extended => RequestRepr::EXTENDED_LEN,
            _ => RequestRepr::COMPACT_LEN,
        }
    }

    /// Length of a reply chunk header in this style (simple replies for `Simple`).
    pub fn chunk_len(self) -> usize {
        match self {
            Self::Simple => SimpleReplyRepr::LEN,
            Self::Structured => ChunkHeaderRepr::STRUCTURED_LEN,
            Self::Extended => ChunkHeaderRepr::EXTENDED_LEN,
        }
    }
}

/// A request header. In the compact style `length` fits in 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RequestRepr {
    /// Command flags.
    pub flags: CommandFlags,
    /// The command.
    pub command: CommandType,
    /// The client's opaque cookie.
    pub cookie: u64,
    /// Export offset.
    pub offset: u64,
    /// Payload length (WRITE, or any command with `PAYLOAD_LEN`) or effect length.
    pub length: u64,
}

impl RequestRepr {
    /// Length of a compact request header.
    pub const COMPACT_LEN: usize = 28;
    /// Length of an extended request header.
    pub const EXTENDED_LEN: usize = 32;

    /// Parses a request header in the negotiated style.
    pub fn parse(buf: &[u8], extended: bool) -> Result<Option<Self>, Malformed> {
        let need = if extended {
            Self::EXTENDED_LEN
        } else {
            Self::COMPACT_LEN
        };
        if buf.len() < need {
            return Ok(None);
        }
        let mut r = Reader::new(buf);
        let magic = r.u32().ok_or(Malformed::BadLength)?;
        let expected = if extended {
            EXTENDED_REQUEST_MAGIC
        } else {
            REQUEST_MAGIC
        };
        if magic != expected {
            return Err(Malformed::BadMagic);
        }
        let flags = CommandFlags::from_bits_retain(r.u16().ok_or(Malformed::BadLength)?);
        let command = r.u16().ok_or(Malformed::BadLength)?.into();
        let cookie = r.u64().ok_or(Malformed::BadLength)?;
        let offset = r.u64().ok_or(Malformed::BadLength)?;
        let length = if extended {
            r.u64()
        } else {
            r.u32().map(u64::from)
        }
        .ok_or(Malformed::BadLength)?;
        Ok(Some(Self {
            flags,
            command,
            cookie,
            offset,
            length,
        }))
    }

    /// Emits a request header; in the compact style `length` must fit in 32 bits.
    pub fn emit(&self, buf: &mut [u8], extended: bool) -> Result<usize, InsufficientSize> {
        if extended {
            let mut w = Writer::new(buf, Self::EXTENDED_LEN)?;
            w.u32(EXTENDED_REQUEST_MAGIC)
                .u16(self.flags.bits())
                .u16(self.command.into())
                .u64(self.cookie)
                .u64(self.offset)
                .u64(self.length);
            Ok(w.len())
        } else {
            let mut w = Writer::new(buf, Self::COMPACT_LEN)?;
            w.u32(REQUEST_MAGIC)
                .u16(self.flags.bits())
                .u16(self.command.into())
                .u64(self.cookie)
                .u64(self.offset)
                .u32(u32::try_from(self.length).unwrap_or(u32::MAX));
            Ok(w.len())
        }
    }
}

/// The spec's rules for a request on an export advertising given transmission flags, shared by
/// the client (before sending) and the server (on receipt), each with its own error and order.
impl CommandType {
    /// The command flags valid for this command on an export advertising `t` (`PAYLOAD_LEN`
    /// aside: it belongs to the header style, not the command).
    pub(crate) fn allowed_flags(self, t: TransmissionFlags) -> CommandFlags {
        use CommandFlags as F;
        use TransmissionFlags as T;
        let mut allowed = F::empty();
        if t.contains(T::SEND_FUA) {
            allowed |= F::FUA;
        }
        match self {
            Self::Read if t.contains(T::SEND_DF) => allowed |= F::DF,
            Self::WriteZeroes => {
                allowed |= F::NO_HOLE;
                if t.contains(T::SEND_FAST_ZERO) {
                    allowed |= F::FAST_ZERO;
                }
            }
            Self::BlockStatus => allowed |= F::REQ_ONE,
            _ => {}
        }
        allowed
    }

    /// The transmission flag an export advertises this command with, and the command's name,
    /// for the commands an export may lack (FLUSH, TRIM, CACHE, WRITE_ZEROES).
    pub(crate) fn advertised_by(self) -> Option<(TransmissionFlags, &'static str)> {
        use TransmissionFlags as T;
        match self {
            Self::Flush => Some((T::SEND_FLUSH, "FLUSH")),
            Self::Trim => Some((T::SEND_TRIM, "TRIM")),
            Self::Cache => Some((T::SEND_CACHE, "CACHE")),
            Self::WriteZeroes => Some((T::SEND_WRITE_ZEROES, "WRITE_ZEROES")),
            _ => None,
        }
    }

    /// Whether the command changes the export's content (refused on read-only exports).
    pub(crate) fn writes(self) -> bool {
        matches!(self, Self::Write | Self::Trim | Self::WriteZeroes)
    }
}

/// A simple reply: `magic, u32 error, u64 cookie` (READ data follows on success).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SimpleReplyRepr {
    /// The error, 0 for success.
    pub error: u32,
    /// The request's cookie.
    pub cookie: u64,
}

impl SimpleReplyRepr {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// Parses a simple reply (the magic must already be known to be the simple one).
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, Malformed> {
        let mut r = Reader::new(buf);
        let (Some(magic), Some(error), Some(cookie)) = (r.u32(), r.u32(), r.u64()) else {
            return Ok(None);
        };
        if magic != SIMPLE_REPLY_MAGIC {
            return Err(Malformed::BadMagic);
        }
        Ok(Some(Self { error, cookie }))
    }

    /// Emits a simple reply.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::LEN)?;
        w.u32(SIMPLE_REPLY_MAGIC).u32(self.error).u64(self.cookie);
        Ok(w.len())
    }
}

/// A structured (20-byte) or extended (32-byte) reply chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChunkHeaderRepr {
    /// Reply flags.
    pub flags: ReplyFlags,
    /// Chunk type.
    pub chunk: ChunkType,
    /// The request's cookie.
    pub cookie: u64,
    /// The request's offset (extended chunks only; 0 in structured ones).
    pub offset: u64,
    /// Payload length.
    pub length: u64,
    /// Extended (32-byte) rather than structured (20-byte).
    pub extended: bool,
}

impl ChunkHeaderRepr {
    /// Length of a structured chunk header.
    pub const STRUCTURED_LEN: usize = 20;
    /// Length of an extended chunk header.
    pub const EXTENDED_LEN: usize = 32;

    /// Bytes on the wire.
    pub fn buffer_len(&self) -> usize {
        if self.extended {
            Self::EXTENDED_LEN
        } else {
            Self::STRUCTURED_LEN
        }
    }

    /// Parses a chunk header; the magic decides the style.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, Malformed> {
        let mut r = Reader::new(buf);
        let Some(magic) = r.u32() else {
            return Ok(None);
        };
        let extended = match magic {
            STRUCTURED_REPLY_MAGIC => false,
            EXTENDED_REPLY_MAGIC => true,
            _ => return Err(Malformed::BadMagic),
        };
        let need = if extended {
            Self::EXTENDED_LEN
        } else {
            Self::STRUCTURED_LEN
        };
        if buf.len() < need {
            return Ok(None);
        }
        let flags = ReplyFlags::from_bits_retain(r.u16().ok_or(Malformed::BadLength)?);
        let chunk = r.u16().ok_or(Malformed::BadLength)?.into();
        let cookie = r.u64().ok_or(Malformed::BadLength)?;
        let (offset, length) = if extended {
            (
                r.u64().ok_or(Malformed::BadLength)?,
                r.u64().ok_or(Malformed::BadLength)?,
            )
        } else {
            (0, u64::from(r.u32().ok_or(Malformed::BadLength)?))
        };
        Ok(Some(Self {
            flags,
            chunk,
            cookie,
            offset,
            length,
            extended,
        }))
    }

    /// Emits the chunk header.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, self.buffer_len())?;
        if self.extended {
            w.u32(EXTENDED_REPLY_MAGIC)
                .u16(self.flags.bits())
                .u16(self.chunk.into())
                .u64(self.cookie)
                .u64(self.offset)
                .u64(self.length);
        } else {
            w.u32(STRUCTURED_REPLY_MAGIC)
                .u16(self.flags.bits())
                .u16(self.chunk.into())
                .u64(self.cookie)
                .u32(u32::try_from(self.length).unwrap_or(u32::MAX));
        }
        Ok(w.len())
    }
}

/// One extent of a block-status reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Extent {
    /// Length in bytes (non-zero on the wire).
    pub length: u64,
    /// Status flags, as defined by the metadata context (`AllocationFlags` for `base:allocation`).
    pub flags: u64,
}

/// A run of block-status descriptors as they lie in the input: 8 bytes each
/// (`NBD_REPLY_TYPE_BLOCK_STATUS`) or 16 bytes each (`NBD_REPLY_TYPE_BLOCK_STATUS_EXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExtentsView<'a> {
    bytes: &'a [u8],
    wide: bool,
}

impl<'a> ExtentsView<'a> {
    /// Size of one descriptor in the given style.
    pub const fn descriptor_len(wide: bool) -> usize {
        if wide { 16 } else { 8 }
    }

    /// A view over whole descriptors (trailing partial bytes are ignored; callers pass whole ones).
    pub fn new(bytes: &'a [u8], wide: bool) -> Self {
        let n = bytes.len() / Self::descriptor_len(wide) * Self::descriptor_len(wide);
        Self {
            bytes: bytes.get(..n).unwrap_or_default(),
            wide,
        }
    }

    /// Number of descriptors.
    pub fn len(&self) -> usize {
        self.bytes.len() / Self::descriptor_len(self.wide)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The descriptors.
    pub fn iter(&self) -> impl Iterator<Item = Extent> + 'a {
        let wide = self.wide;
        self.bytes
            .chunks_exact(Self::descriptor_len(wide))
            .map(move |c| {
                let mut r = Reader::new(c);
                if wide {
                    Extent {
                        length: r.u64().unwrap_or(0),
                        flags: r.u64().unwrap_or(0),
                    }
                } else {
                    Extent {
                        length: u64::from(r.u32().unwrap_or(0)),
                        flags: u64::from(r.u32().unwrap_or(0)),
                    }
                }
            })
    }

    /// Emits one descriptor in the given style (lengths and flags saturate to 32 bits when narrow).
    pub fn emit_descriptor(
        e: &Extent,
        wide: bool,
        buf: &mut [u8],
    ) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::descriptor_len(wide))?;
        if wide {
            w.u64(e.length).u64(e.flags);
        } else {
            w.u32(u32::try_from(e.length).unwrap_or(u32::MAX))
                .u32(u32::try_from(e.flags).unwrap_or(u32::MAX));
        }
        Ok(w.len())
    }
}

/// The fixed part of an error chunk payload: `u32 error, u16 message length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ErrorChunkRepr<'a> {
    /// The error value (non-zero).
    pub error: u32,
    /// Human-readable message.
    pub message: &'a str,
    /// The offset of an `ERROR_OFFSET` chunk.
    pub offset: Option<u64>,
}

impl<'a> ErrorChunkRepr<'a> {
    /// Parses the whole payload of an error chunk; `with_offset` for `ERROR_OFFSET`.
    /// Unknown error chunk types carry the same leading fields; pass `with_offset = false` and
    /// ignore what trails the message.
    pub fn parse(payload: &'a [u8], with_offset: bool, exact: bool) -> Result<Self, Malformed> {
        let mut r = Reader::new(payload);
        let error = r.u32().ok_or(Malformed::BadLength)?;
        let msglen = usize::from(r.u16().ok_or(Malformed::BadLength)?);
        let message = r.bytes(msglen).ok_or(Malformed::BadLength)?;
        let offset = if with_offset {
            Some(r.u64().ok_or(Malformed::BadLength)?)
        } else {
            None
        };
        if exact && r.remaining() != 0 {
            return Err(Malformed::BadLength);
        }
        if error == 0 {
            return Err(Malformed::ZeroField);
        }
        // Invalid UTF-8 in a message is tolerated as an empty message: the error still counts.
        Ok(Self {
            error,
            message: check_string(message).unwrap_or(""),
            offset,
        })
    }

    /// Payload bytes on the wire.
    pub fn buffer_len(&self) -> usize {
        6 + self.message.len() + if self.offset.is_some() { 8 } else { 0 }
    }

    /// Emits the payload.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, self.buffer_len())?;
        w.u32(self.error)
            .u16(u16::try_from(self.message.len()).unwrap_or(u16::MAX))
            .bytes(self.message.as_bytes());
        if let Some(off) = self.offset {
            w.u64(off);
        }
        Ok(w.len())
    }
}

#[cfg(test)]
mod test {
    use super::*;

    // A compact READ of 4096 bytes at offset 1 MiB, cookie 0x0102030405060708.
    static READ_BYTES: [u8; 28] = [
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0x10, 0, 0, 0,
        0, 0x10, 0,
    ];
    // The same as an extended request with FUA set on a WRITE with PAYLOAD_LEN.
    static EXT_WRITE_BYTES: [u8; 32] = [
        0x21, 0xe4, 0x1c, 0x71, 0, 0x21, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0x10, 0, 0,
        0, 0, 0, 0, 0, 0, 0x10, 0,
    ];

    #[test]
    fn request_vectors() {
        let read = RequestRepr {
            flags: CommandFlags::empty(),
            command: CommandType::Read,
            cookie: 0x0102_0304_0506_0708,
            offset: 1 << 20,
            length: 4096,
        };
        let mut buf = [0u8; 32];
        assert_eq!(read.emit(&mut buf, false), Ok(28));
        assert_eq!(buf[..28], READ_BYTES);
        assert_eq!(RequestRepr::parse(&READ_BYTES, false), Ok(Some(read)));
        assert_eq!(RequestRepr::parse(&READ_BYTES[..27], false), Ok(None));
        assert_eq!(RequestRepr::parse(&READ_BYTES, true), Ok(None));

        let write = RequestRepr {
            flags: CommandFlags::FUA | CommandFlags::PAYLOAD_LEN,
            command: CommandType::Write,
            ..read
        };
        assert_eq!(write.emit(&mut buf, true), Ok(32));
        assert_eq!(buf, EXT_WRITE_BYTES);
        assert_eq!(RequestRepr::parse(&EXT_WRITE_BYTES, true), Ok(Some(write)));
        // A compact request where an extended one is expected: wrong magic.
        let mut both = [0u8; 32];
        both[..28].copy_from_slice(&READ_BYTES);
        assert_eq!(RequestRepr::parse(&both, true), Err(Malformed::BadMagic));
    }

    #[test]
    fn reply_headers() {
        let mut buf = [0u8; 32];
        let s = SimpleReplyRepr {
            error: 22,
            cookie: 9,
        };
        assert_eq!(s.emit(&mut buf), Ok(16));
        assert_eq!(
            buf[..16],
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 22, 0, 0, 0, 0, 0, 0, 0, 9]
        );
        assert_eq!(SimpleReplyRepr::parse(&buf[..16]), Ok(Some(s)));

        for extended in [false, true] {
            let c = ChunkHeaderRepr {
                flags: ReplyFlags::DONE,
                chunk: ChunkType::OffsetData,
                cookie: 7,
                offset: if extended { 4096 } else { 0 },
                length: 8 + 512,
                extended,
            };
            let n = c.emit(&mut buf).unwrap();
            assert_eq!(n, c.buffer_len());
            assert_eq!(ChunkHeaderRepr::parse(&buf[..n]), Ok(Some(c)));
            assert_eq!(ChunkHeaderRepr::parse(&buf[..n - 1]), Ok(None));
        }
        assert_eq!(
            ChunkHeaderRepr::parse(&[0x67, 0x44, 0x66, 0x98]),
            Err(Malformed::BadMagic)
        );
    }

    #[test]
    fn extents_and_errors() {
        let mut buf = [0u8; 64];
        let e = Extent {
            length: 65536,
            flags: 3,
        };
        for wide in [false, true] {
            let n = ExtentsView::emit_descriptor(&e, wide, &mut buf).unwrap();
            let n2 = ExtentsView::emit_descriptor(&e, wide, &mut buf[n..]).unwrap();
            let v = ExtentsView::new(&buf[..n + n2 + 3], wide);
            assert_eq!(v.len(), 2);
            assert!(v.iter().all(|x| x == e));
        }
        let err = ErrorChunkRepr {
            error: 5,
            message: "disk on fire",
            offset: Some(512),
        };
        let n = err.emit(&mut buf).unwrap();
        assert_eq!(ErrorChunkRepr::parse(&buf[..n], true, true), Ok(err));
        assert_eq!(
            ErrorChunkRepr::parse(&buf[..n - 1], true, true),
            Err(Malformed::BadLength)
        );
        // message length larger than the payload
        assert_eq!(
            ErrorChunkRepr::parse(&[0, 0, 0, 5, 0xff, 0xff, b'x'], false, false),
            Err(Malformed::BadLength)
        );
        assert_eq!(
            ErrorChunkRepr::parse(&[0, 0, 0, 0, 0, 0], false, true),
            Err(Malformed::ZeroField)
        );
    }
}
