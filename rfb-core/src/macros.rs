//! Logging shim (`log`, `defmt` or nothing), the `complete_or_wait!` parse helper and the
//! `enum_with_unknown!` helper.
//!
//! With both `log` and `defmt` enabled (as `--all-features` does), messages go to `log` and
//! `defmt` only contributes the `defmt::Format` derives.

macro_rules! log_at {
    ($level:ident, $($arg:expr),* $(,)?) => {{
        #[cfg(feature = "log")]
        log::$level!($($arg),*);
        #[cfg(all(feature = "defmt", not(feature = "log")))]
        defmt::$level!($($arg),*);
        #[cfg(not(any(feature = "log", feature = "defmt")))]
        { $( let _ = &$arg; )* }
    }};
}

macro_rules! trace { ($($arg:expr),* $(,)?) => { log_at!(trace, $($arg),*) }; }
macro_rules! debug { ($($arg:expr),* $(,)?) => { log_at!(debug, $($arg),*) }; }

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

/// Declares a wire enum over an integer type whose unknown values are kept as `Unknown(n)`.
macro_rules! enum_with_unknown {
    (
        $(#[$enum_attr:meta])*
        pub enum $name:ident($ty:ty) {
            $( $(#[$variant_attr:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$enum_attr])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        pub enum $name {
            $( $(#[$variant_attr])* $variant, )+
            /// A value this implementation does not know.
            Unknown($ty),
        }

        impl ::core::convert::From<$ty> for $name {
            fn from(value: $ty) -> Self {
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl ::core::convert::From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
