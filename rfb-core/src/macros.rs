//! Logging shim (`log`, `defmt` or nothing) and the `enum_with_unknown!` helper.
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
