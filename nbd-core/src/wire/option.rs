//! Option data (INFO/GO, meta-context requests) and option reply data (SERVER, INFO,
//! META_CONTEXT).

use super::*;

/// The data of `NBD_OPT_INFO` and `NBD_OPT_GO`: `u32 namelen, name, u16 n, u16[n] requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InfoRequestRepr<'a> {
    /// The export name, unchecked bytes (see [`check_string`]).
    pub name: &'a [u8],
    /// The information requests, `2 * n` bytes.
    requests: &'a [u8],
}

impl<'a> InfoRequestRepr<'a> {
    /// Parses the option data; the whole data must be present (its length comes from the
    /// option header). The name length must be at most `data.len() - 6`, and the request count
    /// must account for exactly the rest (CVE-2022-26495 is a missing check of this kind).
    pub fn parse(data: &'a [u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(data);
        let namelen = r.u32().ok_or(Malformed::BadLength)?;
        let namelen = usize::try_from(namelen).map_err(|_| Malformed::BadLength)?;
        if namelen > data.len().saturating_sub(6) {
            return Err(Malformed::BadLength);
        }
        let name = r.bytes(namelen).ok_or(Malformed::BadLength)?;
        let n = usize::from(r.u16().ok_or(Malformed::BadLength)?);
        if r.remaining() != 2 * n {
            return Err(Malformed::BadLength);
        }
        Ok(Self {
            name,
            requests: r.rest(),
        })
    }

    /// The information requests, in the client's order.
    pub fn requests(&self) -> impl Iterator<Item = InfoType> + 'a {
        self.requests
            .chunks_exact(2)
            .map(|c| InfoType::from(u16::from_be_bytes([c[0], c[1]])))
    }

    /// Bytes `emit_data` writes for `name` and `requests`.
    pub fn data_len(name: &str, requests: &[InfoType]) -> usize {
        4 + name.len() + 2 + 2 * requests.len()
    }

    /// Emits option data for `name` and `requests`.
    pub fn emit_data(
        name: &str,
        requests: &[InfoType],
        buf: &mut [u8],
    ) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::data_len(name, requests))?;
        w.u32(len_u32(name.len()))
            .bytes(name.as_bytes())
            .u16(u16::try_from(requests.len()).unwrap_or(u16::MAX));
        for r in requests {
            w.u16((*r).into());
        }
        Ok(w.len())
    }
}

/// The data of `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`:
/// `u32 namelen, name, u32 nqueries, {u32 len, query}*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MetaContextRequestRepr<'a> {
    /// The export name, unchecked bytes.
    pub name: &'a [u8],
    /// Number of queries.
    pub count: u32,
    queries: &'a [u8],
}

impl<'a> MetaContextRequestRepr<'a> {
    /// Parses the option data, checking that every query lies within it (a query length that
    /// would read past the option is `NBD_REP_ERR_INVALID` per the spec) and that nothing trails.
    pub fn parse(data: &'a [u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(data);
        let namelen = r.u32().ok_or(Malformed::BadLength)?;
        let namelen = usize::try_from(namelen).map_err(|_| Malformed::BadLength)?;
        let name = r.bytes(namelen).ok_or(Malformed::BadLength)?;
        let count = r.u32().ok_or(Malformed::BadLength)?;
        let queries = r.rest();
        // Each query takes at least its 4-byte length field: this bounds the loop by the data.
        if u64::from(count) * 4 > queries.len() as u64 {
            return Err(Malformed::BadLength);
        }
        let mut q = Reader::new(queries);
        for _ in 0..count {
            let len = q.u32().ok_or(Malformed::BadLength)?;
            let len = usize::try_from(len).map_err(|_| Malformed::BadLength)?;
            q.bytes(len).ok_or(Malformed::BadLength)?;
        }
        if q.remaining() != 0 {
            return Err(Malformed::BadLength);
        }
        Ok(Self {
            name,
            count,
            queries,
        })
    }

    /// The queries, unchecked bytes, in the client's order.
    pub fn queries(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut r = Reader::new(self.queries);
        core::iter::from_fn(move || {
            let len = usize::try_from(r.u32()?).ok()?;
            r.bytes(len)
        })
    }

    /// Bytes `emit_data` writes.
    pub fn data_len(name: &str, queries: &[&str]) -> usize {
        4 + name.len() + 4 + queries.iter().map(|q| 4 + q.len()).sum::<usize>()
    }

    /// Emits option data for `name` and `queries`.
    pub fn emit_data(
        name: &str,
        queries: &[&str],
        buf: &mut [u8],
    ) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, Self::data_len(name, queries))?;
        w.u32(len_u32(name.len()))
            .bytes(name.as_bytes())
            .u32(len_u32(queries.len()));
        for q in queries {
            w.u32(len_u32(q.len())).bytes(q.as_bytes());
        }
        Ok(w.len())
    }
}

/// `NBD_REP_SERVER` data: `u32 namelen, name, description`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerReplyRepr<'a> {
    /// Export name.
    pub name: &'a str,
    /// Export description (may be empty).
    pub description: &'a str,
}

impl<'a> ServerReplyRepr<'a> {
    /// Parses the reply data.
    pub fn parse(data: &'a [u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(data);
        let namelen = usize::try_from(r.u32().ok_or(Malformed::BadLength)?)
            .map_err(|_| Malformed::BadLength)?;
        let name = r.bytes(namelen).ok_or(Malformed::BadLength)?;
        Ok(Self {
            name: check_string(name)?,
            description: check_string(r.rest())?,
        })
    }

    /// Bytes on the wire.
    pub fn buffer_len(&self) -> usize {
        4 + self.name.len() + self.description.len()
    }

    /// Emits the reply data.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, self.buffer_len())?;
        w.u32(len_u32(self.name.len()))
            .bytes(self.name.as_bytes())
            .bytes(self.description.as_bytes());
        Ok(w.len())
    }
}

/// Size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BlockSize {
    /// Minimum block size: a power of two, at most 64 KiB.
    pub minimum: u32,
    /// Preferred block size: a power of two, at least `minimum`.
    pub preferred: u32,
    /// Maximum payload size: a multiple of `minimum`.
    pub maximum: u32,
}

impl BlockSize {
    /// The spec's defaults when nothing was negotiated (maximum payload 32 MiB).
    pub const DEFAULT: Self = Self {
        minimum: 1,
        preferred: 4096,
        maximum: 32 * 1024 * 1024,
    };

    /// Whether the constraints are consistent as the spec requires.
    pub fn is_valid(&self) -> bool {
        self.minimum.is_power_of_two()
            && self.minimum <= 65536
            && self.preferred.is_power_of_two()
            && self.preferred >= self.minimum
            && self.maximum >= self.minimum
            && self.maximum.is_multiple_of(self.minimum)
    }

    /// Whether a request's offset and length are multiples of the minimum block size.
    pub(crate) fn aligned(&self, offset: u64, length: u64) -> bool {
        let min = u64::from(self.minimum);
        offset.is_multiple_of(min) && length.is_multiple_of(min)
    }
}

/// `NBD_REP_INFO` data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InfoReplyRepr<'a> {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    Export {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: TransmissionFlags,
    },
    /// `NBD_INFO_NAME`: the canonical name.
    Name(&'a str),
    /// `NBD_INFO_DESCRIPTION`.
    Description(&'a str),
    /// `NBD_INFO_BLOCK_SIZE`.
    BlockSize(BlockSize),
    /// An information type this implementation does not know (clients must ignore it).
    Unknown {
        /// The type.
        info: u16,
        /// Its raw data.
        data: &'a [u8],
    },
}

impl<'a> InfoReplyRepr<'a> {
    /// Parses the reply data.
    pub fn parse(data: &'a [u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(data);
        let info = r.u16().ok_or(Malformed::BadLength)?;
        let rest = r.rest();
        Ok(match InfoType::from(info) {
            InfoType::Export => {
                if rest.len() != 10 {
                    return Err(Malformed::BadLength);
                }
                Self::Export {
                    size: r.u64().ok_or(Malformed::BadLength)?,
                    flags: TransmissionFlags::from_bits_retain(
                        r.u16().ok_or(Malformed::BadLength)?,
                    ),
                }
            }
            InfoType::Name => Self::Name(check_string(rest)?),
            InfoType::Description => Self::Description(check_string(rest)?),
            InfoType::BlockSize => {
                if rest.len() != 12 {
                    return Err(Malformed::BadLength);
                }
                Self::BlockSize(BlockSize {
                    minimum: r.u32().ok_or(Malformed::BadLength)?,
                    preferred: r.u32().ok_or(Malformed::BadLength)?,
                    maximum: r.u32().ok_or(Malformed::BadLength)?,
                })
            }
            InfoType::Unknown(info) => Self::Unknown { info, data: rest },
        })
    }

    /// Bytes on the wire.
    pub fn buffer_len(&self) -> usize {
        2 + match self {
            Self::Export { .. } => 10,
            Self::Name(s) | Self::Description(s) => s.len(),
            Self::BlockSize(_) => 12,
            Self::Unknown { data, .. } => data.len(),
        }
    }

    /// Emits the reply data.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, self.buffer_len())?;
        match self {
            Self::Export { size, flags } => {
                w.u16(InfoType::Export.into()).u64(*size).u16(flags.bits());
            }
            Self::Name(s) => {
                w.u16(InfoType::Name.into()).bytes(s.as_bytes());
            }
            Self::Description(s) => {
                w.u16(InfoType::Description.into()).bytes(s.as_bytes());
            }
            Self::BlockSize(b) => {
                w.u16(InfoType::BlockSize.into())
                    .u32(b.minimum)
                    .u32(b.preferred)
                    .u32(b.maximum);
            }
            Self::Unknown { info, data } => {
                w.u16(*info).bytes(data);
            }
        }
        Ok(w.len())
    }
}

/// `NBD_REP_META_CONTEXT` data: `u32 context id, name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MetaContextReplyRepr<'a> {
    /// The context id (0 in replies to LIST).
    pub id: u32,
    /// The context name, `namespace:leaf`.
    pub name: &'a str,
}

impl<'a> MetaContextReplyRepr<'a> {
    /// Parses the reply data.
    pub fn parse(data: &'a [u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(data);
        let id = r.u32().ok_or(Malformed::BadLength)?;
        Ok(Self {
            id,
            name: check_string(r.rest())?,
        })
    }

    /// Bytes on the wire.
    pub fn buffer_len(&self) -> usize {
        4 + self.name.len()
    }

    /// Emits the reply data.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        let mut w = Writer::new(buf, self.buffer_len())?;
        w.u32(self.id).bytes(self.name.as_bytes());
        Ok(w.len())
    }
}

/// Converts a length the caller bounded to `u32` (saturating; callers check limits first).
pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod test {
    use super::*;

    // GO for export "disk" asking for NAME and BLOCK_SIZE.
    static GO_DATA: [u8; 14] = [0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 2, 0, 1, 0, 3];

    #[test]
    fn info_request_vector() {
        let mut buf = [0u8; 14];
        let n =
            InfoRequestRepr::emit_data("disk", &[InfoType::Name, InfoType::BlockSize], &mut buf)
                .unwrap();
        assert_eq!(n, 14);
        assert_eq!(buf, GO_DATA);
        let r = InfoRequestRepr::parse(&GO_DATA).unwrap();
        assert_eq!(r.name, b"disk");
        let mut it = r.requests();
        assert_eq!(it.next(), Some(InfoType::Name));
        assert_eq!(it.next(), Some(InfoType::BlockSize));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn info_request_length_checks() {
        // CVE-2022-26495: namelen 0xFFFFFFFF must not be trusted.
        let mut bad = GO_DATA;
        bad[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(InfoRequestRepr::parse(&bad), Err(Malformed::BadLength));
        // namelen = optlen - 5: one byte short of the count field.
        let mut bad = GO_DATA;
        bad[..4].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(InfoRequestRepr::parse(&bad), Err(Malformed::BadLength));
        // request count disagrees with the data.
        assert_eq!(
            InfoRequestRepr::parse(&GO_DATA[..13]),
            Err(Malformed::BadLength)
        );
        let mut long = [0u8; 16];
        long[..14].copy_from_slice(&GO_DATA);
        assert_eq!(InfoRequestRepr::parse(&long), Err(Malformed::BadLength));
        assert_eq!(
            InfoRequestRepr::parse(&[0, 0, 0]),
            Err(Malformed::BadLength)
        );
        // Empty name, no requests: the minimum.
        let r = InfoRequestRepr::parse(&[0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(r.name, b"");
        assert_eq!(r.requests().count(), 0);
    }

    #[test]
    fn meta_context_request() {
        let mut buf = [0u8; 64];
        let n = MetaContextRequestRepr::emit_data("disk", &["base:allocation", "qemu:"], &mut buf)
            .unwrap();
        assert_eq!(n, 4 + 4 + 4 + 4 + 15 + 4 + 5);
        let r = MetaContextRequestRepr::parse(&buf[..n]).unwrap();
        assert_eq!(r.name, b"disk");
        assert_eq!(r.count, 2);
        let mut q = r.queries();
        assert_eq!(q.next(), Some(&b"base:allocation"[..]));
        assert_eq!(q.next(), Some(&b"qemu:"[..]));
        assert_eq!(q.next(), None);
        // A query length reaching past the option.
        let mut bad = buf;
        bad[12..16].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(
            MetaContextRequestRepr::parse(&bad[..n]),
            Err(Malformed::BadLength)
        );
        // A huge query count with little data.
        let mut bad = buf;
        bad[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            MetaContextRequestRepr::parse(&bad[..n]),
            Err(Malformed::BadLength)
        );
        // Trailing garbage.
        assert_eq!(
            MetaContextRequestRepr::parse(&buf[..n + 1]),
            Err(Malformed::BadLength)
        );
    }

    #[test]
    fn reply_data_round_trips() {
        let mut buf = [0u8; 64];
        let s = ServerReplyRepr {
            name: "disk",
            description: "a disk",
        };
        let n = s.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\0\0\0\x04diska disk");
        assert_eq!(ServerReplyRepr::parse(&buf[..n]), Ok(s));
        assert_eq!(
            ServerReplyRepr::parse(&[0, 0, 0, 9, b'a']),
            Err(Malformed::BadLength)
        );

        for info in [
            InfoReplyRepr::Export {
                size: 1 << 40,
                flags: TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH,
            },
            InfoReplyRepr::Name("disk"),
            InfoReplyRepr::Description("the disk"),
            InfoReplyRepr::BlockSize(BlockSize::DEFAULT),
            InfoReplyRepr::Unknown {
                info: 77,
                data: b"xyz",
            },
        ] {
            let n = info.emit(&mut buf).unwrap();
            assert_eq!(n, info.buffer_len());
            assert_eq!(InfoReplyRepr::parse(&buf[..n]), Ok(info));
        }
        // NBD_INFO_EXPORT is exactly 12 bytes.
        assert_eq!(
            InfoReplyRepr::parse(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Malformed::BadLength)
        );

        let m = MetaContextReplyRepr {
            id: 1,
            name: "base:allocation",
        };
        let n = m.emit(&mut buf).unwrap();
        assert_eq!(MetaContextReplyRepr::parse(&buf[..n]), Ok(m));
    }

    #[test]
    fn block_size_validity() {
        assert!(BlockSize::DEFAULT.is_valid());
        let b = BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 1 << 25,
        };
        assert!(b.is_valid());
        assert!(!BlockSize { minimum: 3, ..b }.is_valid());
        assert!(
            !BlockSize {
                minimum: 1 << 17,
                ..b
            }
            .is_valid()
        );
        assert!(
            !BlockSize {
                preferred: 256,
                ..b
            }
            .is_valid()
        );
        assert!(!BlockSize { maximum: 1000, ..b }.is_valid());
    }
}
