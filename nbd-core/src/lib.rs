//! Sans-IO NBD protocol core.
#![no_std]
#![forbid(unsafe_code)]
