//! What a server offers: its exports and their capabilities.

use bitflags::bitflags;

use crate::wire::{BlockSize, MAX_STRING_LEN, TransmissionFlags};

bitflags! {
    /// What an export's backend can do. The server advertises transmission flags from these
    /// (and from what was negotiated), and refuses commands the export cannot do.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ExportFeatures: u16 {
        /// FLUSH makes every completed write durable.
        const FLUSH = 1 << 0;
        /// Writes with FUA can be made durable before the reply.
        const FUA = 1 << 1;
        /// TRIM (punch hole) is supported.
        const TRIM = 1 << 2;
        /// WRITE_ZEROES is supported.
        const WRITE_ZEROES = 1 << 3;
        /// WRITE_ZEROES with FAST_ZERO can fail fast when zeroing is slow.
        const FAST_ZERO = 1 << 4;
        /// CACHE (prefetch) is supported.
        const CACHE = 1 << 5;
        /// Several connections see one consistent export and FLUSH on one covers writes made
        /// through all (`NBD_FLAG_CAN_MULTI_CONN`).
        const MULTI_CONN = 1 << 6;
        /// The medium is rotational.
        const ROTATIONAL = 1 << 7;
        /// The `base:allocation` metadata context (BLOCK_STATUS) is available.
        const BASE_ALLOCATION = 1 << 8;
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for ExportFeatures {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "ExportFeatures({=u16:#x})", self.bits())
    }
}

/// One export a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Export<'a> {
    /// The name clients select it by (at most 4096 bytes, no NUL).
    pub name: &'a str,
    /// A human-readable description (`NBD_INFO_DESCRIPTION`, LIST); may be empty.
    pub description: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// Whether the export refuses writes.
    pub read_only: bool,
    /// In selective TLS mode: only reachable after TLS (hidden from LIST before it).
    pub tls_only: bool,
    /// Block size constraints (`NBD_INFO_BLOCK_SIZE`); `maximum` is the maximum payload size.
    pub block_size: BlockSize,
    /// What the backend can do.
    pub features: ExportFeatures,
}

impl<'a> Export<'a> {
    /// A writable export with every feature a file backend has, default block sizes.
    ///
    /// That includes [`ExportFeatures::MULTI_CONN`]: clients (nbdcopy, qemu-img) then open
    /// several connections and rely on a FLUSH on one of them covering writes made on all.
    /// That holds for a file or a shared RAM disk; for a backend per connection (or one that
    /// caches writes per connection) remove it:
    /// `export.features.remove(ExportFeatures::MULTI_CONN)`.
    pub const fn new(name: &'a str, size: u64) -> Self {
        Self {
            name,
            description: "",
            size,
            read_only: false,
            tls_only: false,
            block_size: BlockSize::DEFAULT,
            features: ExportFeatures::all().difference(ExportFeatures::ROTATIONAL),
        }
    }

    /// With this description (for `static`/`const` tables: the struct grows, so it is built
    /// with `new` and these, not with a struct literal).
    pub const fn with_description(mut self, description: &'a str) -> Self {
        self.description = description;
        self
    }

    /// Read-only or not.
    pub const fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Reachable only after TLS in selective mode, or not.
    pub const fn with_tls_only(mut self, tls_only: bool) -> Self {
        self.tls_only = tls_only;
        self
    }

    /// With these block size constraints.
    pub const fn with_block_size(mut self, block_size: BlockSize) -> Self {
        self.block_size = block_size;
        self
    }

    /// With exactly these features.
    pub const fn with_features(mut self, features: ExportFeatures) -> Self {
        self.features = features;
        self
    }

    /// The transmission flags to advertise, given what the connection negotiated.
    pub fn transmission_flags(&self, structured: bool, extended: bool) -> TransmissionFlags {
        let f = self.features;
        let mut t = TransmissionFlags::HAS_FLAGS;
        let writable = !self.read_only;
        let pairs = [
            (self.read_only, TransmissionFlags::READ_ONLY),
            (
                f.contains(ExportFeatures::FLUSH),
                TransmissionFlags::SEND_FLUSH,
            ),
            (f.contains(ExportFeatures::FUA), TransmissionFlags::SEND_FUA),
            (
                f.contains(ExportFeatures::ROTATIONAL),
                TransmissionFlags::ROTATIONAL,
            ),
            (
                writable && f.contains(ExportFeatures::TRIM),
                TransmissionFlags::SEND_TRIM,
            ),
            (
                writable && f.contains(ExportFeatures::WRITE_ZEROES),
                TransmissionFlags::SEND_WRITE_ZEROES,
            ),
            (structured || extended, TransmissionFlags::SEND_DF),
            (
                f.contains(ExportFeatures::MULTI_CONN) || self.read_only,
                TransmissionFlags::CAN_MULTI_CONN,
            ),
            (
                f.contains(ExportFeatures::CACHE),
                TransmissionFlags::SEND_CACHE,
            ),
            (
                writable && f.contains(ExportFeatures::WRITE_ZEROES | ExportFeatures::FAST_ZERO),
                TransmissionFlags::SEND_FAST_ZERO,
            ),
            (
                extended && f.contains(ExportFeatures::BASE_ALLOCATION),
                TransmissionFlags::BLOCK_STATUS_PAYLOAD,
            ),
        ];
        for (on, flag) in pairs {
            if on {
                t |= flag;
            }
        }
        t
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.name.len() > MAX_STRING_LEN || self.name.contains('\0') {
            return Err(ConfigError::BadName);
        }
        if self.description.len() > MAX_STRING_LEN || self.description.contains('\0') {
            return Err(ConfigError::BadName);
        }
        if !self.block_size.is_valid() {
            return Err(ConfigError::BadBlockSize);
        }
        Ok(())
    }
}

/// A server configuration that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigError {
    /// An export name or description is longer than 4096 bytes or contains NUL.
    BadName,
    /// Two exports have the same name.
    DuplicateName,
    /// Block size constraints are inconsistent.
    BadBlockSize,
    /// The default export index is out of range.
    BadDefaultExport,
    /// `max_option_len` is smaller than the smallest useful option (an INFO/GO with a name of
    /// `max_name_len` bytes).
    OptionLimitTooSmall,
    /// `max_name_len` is over the spec's 4096.
    NameLimitTooLarge,
    /// More than 65535 exports.
    TooManyExports,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::BadName => "export name or description longer than 4096 bytes or contains NUL",
            Self::DuplicateName => "two exports have the same name",
            Self::BadBlockSize => {
                "block sizes must be powers of two (minimum ≤ 64 KiB ≤ ...), maximum a multiple of minimum"
            }
            Self::BadDefaultExport => "default export index out of range",
            Self::OptionLimitTooSmall => "max_option_len is too small for an INFO/GO option",
            Self::NameLimitTooLarge => "max_name_len is over the spec's limit of 4096",
            Self::TooManyExports => "more than 65535 exports",
        })
    }
}

impl core::error::Error for ConfigError {}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn flags_follow_features_and_negotiation() {
        let e = Export::new("disk", 1 << 20);
        let t = e.transmission_flags(false, false);
        assert!(t.contains(
            TransmissionFlags::HAS_FLAGS
                | TransmissionFlags::SEND_FLUSH
                | TransmissionFlags::SEND_FUA
                | TransmissionFlags::SEND_TRIM
                | TransmissionFlags::SEND_WRITE_ZEROES
                | TransmissionFlags::SEND_FAST_ZERO
                | TransmissionFlags::SEND_CACHE
                | TransmissionFlags::CAN_MULTI_CONN
        ));
        assert!(!t.contains(TransmissionFlags::SEND_DF));
        assert!(!t.contains(TransmissionFlags::READ_ONLY));
        assert!(
            e.transmission_flags(true, false)
                .contains(TransmissionFlags::SEND_DF)
        );
        assert!(
            e.transmission_flags(false, true)
                .contains(TransmissionFlags::SEND_DF | TransmissionFlags::BLOCK_STATUS_PAYLOAD)
        );
        let ro = Export {
            read_only: true,
            features: ExportFeatures::empty(),
            ..e
        };
        let t = ro.transmission_flags(false, false);
        assert_eq!(
            t,
            TransmissionFlags::HAS_FLAGS
                | TransmissionFlags::READ_ONLY
                | TransmissionFlags::CAN_MULTI_CONN
        );
    }
}
