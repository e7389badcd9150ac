//! TLS for the protocol cores: rustls 0.23 unbuffered connections behind a Sans-IO layer.
#![no_std]
