//! Logging shim (`log`, `defmt` or nothing) and the `enum_with_unknown!` helper.

#[cfg(all(feature = "log", feature = "defmt"))]
compile_error!("the `log` and `defmt` features are mutually exclusive");

macro_rules! nbd_log {
    ($level:ident, $($arg:expr),* $(,)?) => {{
        #[cfg(feature = "log")]
        log::$level!($($arg),*);
        #[cfg(feature = "defmt")]
        defmt::$level!($($arg),*);
        #[cfg(not(any(feature = "log", feature = "defmt")))]
        { $( let _ = &$arg; )* }
    }};
}

macro_rules! trace { ($($arg:expr),* $(,)?) => { nbd_log!(trace, $($arg),*) }; }
macro_rules! debug { ($($arg:expr),* $(,)?) => { nbd_log!(debug, $($arg),*) }; }

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
