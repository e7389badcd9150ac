//! NBD wire format: constants, flag sets, code points, and the checked `Repr` types of every
//! message (all integers big-endian, as `doc/proto.md` says).
//!
//! Every `Repr` has `parse` (from a byte slice that must hold the whole message; `Ok(None)` means
//! "not enough bytes yet", never an error), `emit` (into a slice of at least `buffer_len()` bytes,
//! panic-free on a slice of exactly that length) and `buffer_len`. Unknown code points are kept as
//! `Unknown(n)`: deciding whether an unknown value is an error is the state machine's job.

mod handshake;
mod option;
mod transmission;

pub use handshake::*;
pub use option::*;
pub use transmission::*;

use bitflags::bitflags;

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: starts the newstyle greeting's second field and every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// The oldstyle greeting's second field (oldstyle negotiation, removed from the spec in 3.10).
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a compact (28-byte) request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of an extended (32-byte) request.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Magic of a simple (16-byte) reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured (20-byte) reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Magic of an extended (32-byte) reply chunk.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// The spec's hard limit on every string (export names, descriptions, queries): 4096 bytes.
pub const MAX_STRING_LEN: usize = 4096;

/// The output buffer is too small; nothing was written. Retry with at least `required` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InsufficientSize {
    /// Bytes the output needs.
    pub required: usize,
}

impl core::fmt::Display for InsufficientSize {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "output buffer too small: {} bytes needed", self.required)
    }
}

impl core::error::Error for InsufficientSize {}

/// A message that is present but malformed (the state machine decides what the peer is told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Malformed {
    /// A magic number is wrong.
    BadMagic,
    /// A length field disagrees with the enclosing length or the message type's fixed size.
    BadLength,
    /// A string is not UTF-8 or contains a NUL byte.
    BadString,
    /// A string is longer than the spec's 4096-byte limit.
    StringTooLong,
    /// A field the spec requires to be non-zero is zero.
    ZeroField,
}

impl core::fmt::Display for Malformed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadMagic => "bad magic number",
            Self::BadLength => "inconsistent length field",
            Self::BadString => "string is not UTF-8 or contains NUL",
            Self::StringTooLong => "string longer than 4096 bytes",
            Self::ZeroField => "field must be non-zero",
        })
    }
}

bitflags! {
    /// Handshake flags the server sends in its greeting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct HandshakeFlags: u16 {
        /// `NBD_FLAG_FIXED_NEWSTYLE`.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_NO_ZEROES`.
        const NO_ZEROES = 1 << 1;
    }

    /// Client flags, the client's answer to the greeting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ClientFlags: u32 {
        /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
        const FIXED_NEWSTYLE = 1 << 0;
        /// `NBD_FLAG_C_NO_ZEROES`.
        const NO_ZEROES = 1 << 1;
    }

    /// Transmission flags of an export.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct TransmissionFlags: u16 {
        /// `NBD_FLAG_HAS_FLAGS`: always set.
        const HAS_FLAGS = 1 << 0;
        /// `NBD_FLAG_READ_ONLY`.
        const READ_ONLY = 1 << 1;
        /// `NBD_FLAG_SEND_FLUSH`.
        const SEND_FLUSH = 1 << 2;
        /// `NBD_FLAG_SEND_FUA`.
        const SEND_FUA = 1 << 3;
        /// `NBD_FLAG_ROTATIONAL`.
        const ROTATIONAL = 1 << 4;
        /// `NBD_FLAG_SEND_TRIM`.
        const SEND_TRIM = 1 << 5;
        /// `NBD_FLAG_SEND_WRITE_ZEROES`.
        const SEND_WRITE_ZEROES = 1 << 6;
        /// `NBD_FLAG_SEND_DF` (only with structured replies or extended headers).
        const SEND_DF = 1 << 7;
        /// `NBD_FLAG_CAN_MULTI_CONN`.
        const CAN_MULTI_CONN = 1 << 8;
        /// `NBD_FLAG_SEND_RESIZE` (experimental).
        const SEND_RESIZE = 1 << 9;
        /// `NBD_FLAG_SEND_CACHE`.
        const SEND_CACHE = 1 << 10;
        /// `NBD_FLAG_SEND_FAST_ZERO`.
        const SEND_FAST_ZERO = 1 << 11;
        /// `NBD_FLAG_BLOCK_STATUS_PAYLOAD` (extended headers only).
        const BLOCK_STATUS_PAYLOAD = 1 << 12;
    }

    /// Command flags of a request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct CommandFlags: u16 {
        /// `NBD_CMD_FLAG_FUA`.
        const FUA = 1 << 0;
        /// `NBD_CMD_FLAG_NO_HOLE` (WRITE_ZEROES).
        const NO_HOLE = 1 << 1;
        /// `NBD_CMD_FLAG_DF` (READ).
        const DF = 1 << 2;
        /// `NBD_CMD_FLAG_REQ_ONE` (BLOCK_STATUS).
        const REQ_ONE = 1 << 3;
        /// `NBD_CMD_FLAG_FAST_ZERO` (WRITE_ZEROES).
        const FAST_ZERO = 1 << 4;
        /// `NBD_CMD_FLAG_PAYLOAD_LEN` (extended headers only).
        const PAYLOAD_LEN = 1 << 5;
    }

    /// Flags of a structured or extended reply chunk.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ReplyFlags: u16 {
        /// `NBD_REPLY_FLAG_DONE`: the last chunk of this reply.
        const DONE = 1 << 0;
    }

    /// Status flags of the `base:allocation` metadata context.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct AllocationFlags: u32 {
        /// `NBD_STATE_HOLE`: the extent is not allocated.
        const HOLE = 1 << 0;
        /// `NBD_STATE_ZERO`: the extent reads as zeroes.
        const ZERO = 1 << 1;
    }
}

#[cfg(feature = "defmt")]
macro_rules! defmt_bits {
    ($($t:ty),*) => {$(
        impl defmt::Format for $t {
            fn format(&self, f: defmt::Formatter<'_>) {
                defmt::write!(f, "{}({=u64:#x})", stringify!($t), u64::from(self.bits()))
            }
        }
    )*};
}
#[cfg(feature = "defmt")]
defmt_bits!(
    HandshakeFlags,
    ClientFlags,
    TransmissionFlags,
    CommandFlags,
    ReplyFlags,
    AllocationFlags
);

enum_with_unknown! {
    /// Option types (`NBD_OPT_*`).
    pub enum OptionType(u32) {
        /// `NBD_OPT_EXPORT_NAME`.
        ExportName = 1,
        /// `NBD_OPT_ABORT`.
        Abort = 2,
        /// `NBD_OPT_LIST`.
        List = 3,
        /// `NBD_OPT_PEEK_EXPORT` (withdrawn).
        PeekExport = 4,
        /// `NBD_OPT_STARTTLS`.
        StartTls = 5,
        /// `NBD_OPT_INFO`.
        Info = 6,
        /// `NBD_OPT_GO`.
        Go = 7,
        /// `NBD_OPT_STRUCTURED_REPLY`.
        StructuredReply = 8,
        /// `NBD_OPT_LIST_META_CONTEXT`.
        ListMetaContext = 9,
        /// `NBD_OPT_SET_META_CONTEXT`.
        SetMetaContext = 10,
        /// `NBD_OPT_EXTENDED_HEADERS`.
        ExtendedHeaders = 11,
    }
}

enum_with_unknown! {
    /// Option reply types (`NBD_REP_*`); the error replies have bit 31 set.
    pub enum ReplyType(u32) {
        /// `NBD_REP_ACK`.
        Ack = 1,
        /// `NBD_REP_SERVER`.
        Server = 2,
        /// `NBD_REP_INFO`.
        Info = 3,
        /// `NBD_REP_META_CONTEXT`.
        MetaContext = 4,
        /// `NBD_REP_ERR_UNSUP`.
        ErrUnsup = 0x8000_0001,
        /// `NBD_REP_ERR_POLICY`.
        ErrPolicy = 0x8000_0002,
        /// `NBD_REP_ERR_INVALID`.
        ErrInvalid = 0x8000_0003,
        /// `NBD_REP_ERR_PLATFORM`.
        ErrPlatform = 0x8000_0004,
        /// `NBD_REP_ERR_TLS_REQD`.
        ErrTlsReqd = 0x8000_0005,
        /// `NBD_REP_ERR_UNKNOWN`.
        ErrUnknown = 0x8000_0006,
        /// `NBD_REP_ERR_SHUTDOWN`.
        ErrShutdown = 0x8000_0007,
        /// `NBD_REP_ERR_BLOCK_SIZE_REQD`.
        ErrBlockSizeReqd = 0x8000_0008,
        /// `NBD_REP_ERR_TOO_BIG`.
        ErrTooBig = 0x8000_0009,
        /// `NBD_REP_ERR_EXT_HEADER_REQD`.
        ErrExtHeaderReqd = 0x8000_000a,
    }
}

impl ReplyType {
    /// Whether this is an error reply (bit 31 set).
    pub fn is_error(self) -> bool {
        u32::from(self) & 0x8000_0000 != 0
    }
}

impl core::fmt::Display for ReplyType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Ack => f.write_str("NBD_REP_ACK"),
            Self::Server => f.write_str("NBD_REP_SERVER"),
            Self::Info => f.write_str("NBD_REP_INFO"),
            Self::MetaContext => f.write_str("NBD_REP_META_CONTEXT"),
            Self::ErrUnsup => f.write_str("option not supported (NBD_REP_ERR_UNSUP)"),
            Self::ErrPolicy => f.write_str("forbidden by server policy (NBD_REP_ERR_POLICY)"),
            Self::ErrInvalid => f.write_str("invalid option request (NBD_REP_ERR_INVALID)"),
            Self::ErrPlatform => {
                f.write_str("not supported on this platform (NBD_REP_ERR_PLATFORM)")
            }
            Self::ErrTlsReqd => f.write_str("server requires TLS (NBD_REP_ERR_TLS_REQD)"),
            Self::ErrUnknown => f.write_str("export not found (NBD_REP_ERR_UNKNOWN)"),
            Self::ErrShutdown => f.write_str("server shutting down (NBD_REP_ERR_SHUTDOWN)"),
            Self::ErrBlockSizeReqd => {
                f.write_str("server requires block size negotiation (NBD_REP_ERR_BLOCK_SIZE_REQD)")
            }
            Self::ErrTooBig => f.write_str("request or reply too large (NBD_REP_ERR_TOO_BIG)"),
            Self::ErrExtHeaderReqd => {
                f.write_str("server requires extended headers (NBD_REP_ERR_EXT_HEADER_REQD)")
            }
            Self::Unknown(n) if n & 0x8000_0000 != 0 => write!(f, "unknown option error {n:#x}"),
            Self::Unknown(n) => write!(f, "unknown option reply {n:#x}"),
        }
    }
}

enum_with_unknown! {
    /// Information types of `NBD_REP_INFO` and of INFO/GO requests (`NBD_INFO_*`).
    pub enum InfoType(u16) {
        /// `NBD_INFO_EXPORT`: size and transmission flags.
        Export = 0,
        /// `NBD_INFO_NAME`: the canonical export name.
        Name = 1,
        /// `NBD_INFO_DESCRIPTION`.
        Description = 2,
        /// `NBD_INFO_BLOCK_SIZE`: size constraints.
        BlockSize = 3,
    }
}

enum_with_unknown! {
    /// Request types (`NBD_CMD_*`).
    pub enum CommandType(u16) {
        /// `NBD_CMD_READ`.
        Read = 0,
        /// `NBD_CMD_WRITE`.
        Write = 1,
        /// `NBD_CMD_DISC`.
        Disc = 2,
        /// `NBD_CMD_FLUSH`.
        Flush = 3,
        /// `NBD_CMD_TRIM`.
        Trim = 4,
        /// `NBD_CMD_CACHE`.
        Cache = 5,
        /// `NBD_CMD_WRITE_ZEROES`.
        WriteZeroes = 6,
        /// `NBD_CMD_BLOCK_STATUS`.
        BlockStatus = 7,
        /// `NBD_CMD_RESIZE` (experimental).
        Resize = 8,
    }
}

enum_with_unknown! {
    /// Structured reply chunk types (`NBD_REPLY_TYPE_*`).
    pub enum ChunkType(u16) {
        /// `NBD_REPLY_TYPE_NONE`.
        None = 0,
        /// `NBD_REPLY_TYPE_OFFSET_DATA`.
        OffsetData = 1,
        /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
        OffsetHole = 2,
        /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
        BlockStatus = 5,
        /// `NBD_REPLY_TYPE_BLOCK_STATUS_EXT`.
        BlockStatusExt = 6,
        /// `NBD_REPLY_TYPE_ERROR`.
        Error = 0x8001,
        /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
        ErrorOffset = 0x8002,
    }
}

impl ChunkType {
    /// Whether this is an error chunk (bit 15 set).
    pub fn is_error(self) -> bool {
        u16::from(self) & 0x8000 != 0
    }
}

enum_with_unknown! {
    /// Error values of replies (`NBD_E*`).
    pub enum ErrorCode(u32) {
        /// `NBD_EPERM`: operation not permitted.
        Perm = 1,
        /// `NBD_EIO`: input/output error.
        Io = 5,
        /// `NBD_ENOMEM`: cannot allocate memory.
        NoMem = 12,
        /// `NBD_EINVAL`: invalid argument.
        Inval = 22,
        /// `NBD_ENOSPC`: no space left on device.
        NoSpc = 28,
        /// `NBD_EOVERFLOW`: value too large.
        Overflow = 75,
        /// `NBD_ENOTSUP`: operation not supported.
        NotSup = 95,
        /// `NBD_ESHUTDOWN`: server is shutting down.
        Shutdown = 108,
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Perm => f.write_str("operation not permitted (EPERM)"),
            Self::Io => f.write_str("input/output error (EIO)"),
            Self::NoMem => f.write_str("cannot allocate memory (ENOMEM)"),
            Self::Inval => f.write_str("invalid argument (EINVAL)"),
            Self::NoSpc => f.write_str("no space left on device (ENOSPC)"),
            Self::Overflow => f.write_str("value too large (EOVERFLOW)"),
            Self::NotSup => f.write_str("operation not supported (ENOTSUP)"),
            Self::Shutdown => f.write_str("server is shutting down (ESHUTDOWN)"),
            Self::Unknown(n) => write!(f, "unknown NBD error {n}"),
        }
    }
}

/// A bounds-checked big-endian reader over a byte slice. Every read returns `None` instead of
/// panicking when the slice is too short.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).and_then(|b| b.try_into().ok())
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }
}

/// A bounds-checked big-endian writer; the caller checks the total length first, so writes past
/// the end are silently dropped rather than panicking (and tests assert the lengths agree).
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// A writer over `buf`, or `InsufficientSize` when `buf` is shorter than `needed`.
    pub(crate) fn new(buf: &'a mut [u8], needed: usize) -> Result<Self, InsufficientSize> {
        if buf.len() < needed {
            return Err(InsufficientSize { required: needed });
        }
        Ok(Self { buf, pos: 0 })
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) -> &mut Self {
        let end = self.pos.saturating_add(data.len()).min(self.buf.len());
        let n = end - self.pos;
        if let (Some(dst), Some(src)) = (self.buf.get_mut(self.pos..end), data.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos = end;
        self
    }

    pub(crate) fn zeroes(&mut self, n: usize) -> &mut Self {
        let end = self.pos.saturating_add(n).min(self.buf.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.fill(0);
        }
        self.pos = end;
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    pub(crate) fn len(&self) -> usize {
        self.pos
    }

    /// Runs a nested `emit` on the unwritten rest of the buffer and counts what it wrote.
    pub(crate) fn nested(
        &mut self,
        emit: impl FnOnce(&mut [u8]) -> Result<usize, InsufficientSize>,
    ) -> Result<&mut Self, InsufficientSize> {
        let pos = self.pos.min(self.buf.len());
        let n = emit(&mut self.buf[pos..])?;
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
        Ok(self)
    }
}

/// Checks a string the peer sent: UTF-8, no NUL, at most [`MAX_STRING_LEN`] bytes.
pub fn check_string(bytes: &[u8]) -> Result<&str, Malformed> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(Malformed::StringTooLong);
    }
    if bytes.contains(&0) {
        return Err(Malformed::BadString);
    }
    core::str::from_utf8(bytes).map_err(|_| Malformed::BadString)
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn code_points_round_trip() {
        for v in 0..16u32 {
            assert_eq!(u32::from(OptionType::from(v)), v);
        }
        assert_eq!(OptionType::from(7), OptionType::Go);
        assert_eq!(ReplyType::from(0x8000_0005), ReplyType::ErrTlsReqd);
        assert!(ReplyType::ErrTlsReqd.is_error());
        assert!(!ReplyType::Ack.is_error());
        assert!(ReplyType::Unknown(0x8000_0100).is_error());
        assert_eq!(ChunkType::from(0x8002), ChunkType::ErrorOffset);
        assert!(ChunkType::Unknown(0x8123).is_error());
        assert_eq!(ErrorCode::from(108), ErrorCode::Shutdown);
        assert_eq!(CommandType::from(42), CommandType::Unknown(42));
    }

    #[test]
    fn strings_are_checked() {
        assert_eq!(check_string(b"disk"), Ok("disk"));
        assert_eq!(check_string(b"a\0b"), Err(Malformed::BadString));
        assert_eq!(check_string(&[0xff, 0xfe]), Err(Malformed::BadString));
        assert_eq!(check_string(&[b'a'; 4096]).map(str::len), Ok(4096));
        assert_eq!(check_string(&[b'a'; 4097]), Err(Malformed::StringTooLong));
    }

    #[test]
    fn reader_never_panics() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u32(), None);
        assert_eq!(r.bytes(2), None);
        assert_eq!(r.bytes(1), Some(&[3][..]));
        assert_eq!(r.remaining(), 0);
    }
}
