//! The `complete_or_wait!` helper every step function parses with (rfb-core's own; `macros.rs`
//! is kept identical to nbd-core's).

/// The value of a `Repr::parse` result inside a step function, or a return from it:
///
/// * `WireError::Truncated` → `return Ok((0, None))` (or `Ok($wait)`): consume nothing and wait
///   for more bytes;
/// * `WireError::Malformed` → `return Err(Error::Protocol($malformed))`: the bytes can never form
///   the message, so the connection fails with that (fatal) error instead of waiting forever.
///
/// ```ignore
/// let m = complete_or_wait!(SetPixelFormatRepr::parse(input), malformed => P::InvalidPixelFormat);
/// ```
macro_rules! complete_or_wait {
    ($parse:expr, malformed => $malformed:expr $(,)?) => {
        complete_or_wait!($parse, malformed => $malformed, wait => (0, None))
    };
    ($parse:expr, malformed => $malformed:expr, wait => $wait:expr $(,)?) => {
        match $parse {
            Ok(v) => v,
            Err($crate::wire::WireError::Truncated { .. }) => return Ok($wait),
            Err($crate::wire::WireError::Malformed) => {
                return Err($crate::Error::Protocol($malformed));
            }
        }
    };
}
