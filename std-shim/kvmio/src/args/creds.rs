//! `kvmio creds generate` and `kvmio creds check`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

/// `kvmio creds …`.
#[derive(Subcommand)]
pub(crate) enum CredsCommand {
    /// Create a CA, server and client certificates and an empty CRL in DIR (QEMU layout,
    /// usable by qemu-nbd, nbdkit, libnbd and kvmio).
    Generate {
        /// Directory to create.
        dir: PathBuf,
        /// Server host names (repeatable; default localhost).
        #[arg(long = "hostname", value_name = "H")]
        hostnames: Vec<String>,
        /// Server IP addresses (repeatable; default 127.0.0.1 and ::1).
        #[arg(long = "ip", value_name = "A")]
        ips: Vec<IpAddr>,
        /// Common name of the client certificate.
        #[arg(long, default_value = "client.example.com")]
        client_cn: String,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Key type.
        #[arg(long, value_enum, default_value_t = KeyArg::EcdsaP256)]
        key: KeyArg,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Check the credentials in DIR as QEMU does at load time, and explain every problem.
    Check {
        /// Directory in the QEMU layout.
        dir: PathBuf,
        /// Which certificate to check.
        #[arg(long, value_enum)]
        endpoint: EndpointArg,
    },
}

/// A key type.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum KeyArg {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa2048,
    Rsa3072,
}

/// Which side's credentials.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum EndpointArg {
    Server,
    Client,
}

impl KeyArg {
    /// The algorithm to generate keys for.
    pub(crate) fn algorithm(self) -> tls_glue::KeyAlgorithm {
        match self {
            KeyArg::EcdsaP256 => tls_glue::KeyAlgorithm::EcdsaP256,
            KeyArg::EcdsaP384 => tls_glue::KeyAlgorithm::EcdsaP384,
            KeyArg::Ed25519 => tls_glue::KeyAlgorithm::Ed25519,
            KeyArg::Rsa2048 => tls_glue::KeyAlgorithm::Rsa2048,
            KeyArg::Rsa3072 => tls_glue::KeyAlgorithm::Rsa3072,
        }
    }
}

impl EndpointArg {
    /// The side to check.
    pub(crate) fn endpoint(self) -> tls_glue::Endpoint {
        match self {
            EndpointArg::Server => tls_glue::Endpoint::Server,
            EndpointArg::Client => tls_glue::Endpoint::Client,
        }
    }

    /// `server` or `client`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            EndpointArg::Server => "server",
            EndpointArg::Client => "client",
        }
    }
}
