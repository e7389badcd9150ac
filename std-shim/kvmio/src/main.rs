//! `kvmio`: serve and use NBD virtual media and VNC consoles, with TLS. The command line, the
//! `kvmio serve` configuration file, progress bars, logging and JSON output live here; what they
//! run is the `std_shim` library.
// Doc comments here are clap help texts (`nbd://host[:port]/…`), not rustdoc links.
#![allow(rustdoc::broken_intra_doc_links)]

/// `println!` that returns the error instead of panicking (e.g. when piped into `head`).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?;
    }};
}

mod args;
mod creds;
mod gadget;
mod nbd;
mod progress;
mod serve;
mod vnc;

use std::sync::Arc;

use clap::Parser;

use crate::args::nbd::NbdCommand;
use crate::args::vnc::VncCommand;
use crate::args::{Cli, Top};

fn main() {
    let cli = Cli::parse();
    let level = match (cli.verbose, cli.command.is_serve()) {
        (0, true) => "info",
        (0, false) => "warn",
        (1, _) => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    // Past RLIMIT_FSIZE a write fails with EFBIG (reported like any I/O error) instead of
    // SIGXFSZ ending the process, as servers and copy tools want.
    if let Err(e) = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        log::warn!("SIGXFSZ: {e}");
    }
    let r = match cli.command {
        Top::Nbd(NbdCommand::Serve(a)) => nbd::serve(a),
        Top::Nbd(NbdCommand::Info { uri, json, tls }) => nbd::info(&uri, json, &tls),
        Top::Nbd(NbdCommand::List { uri, tls }) => nbd::list(&uri, &tls),
        Top::Nbd(NbdCommand::Ping { uri, count, tls }) => nbd::ping(&uri, count, &tls),
        Top::Nbd(NbdCommand::Copy(a)) => nbd::copy(a),
        Top::Creds(c) => creds::run(c),
        Top::Gadget(c) => gadget::run(c),
        Top::Media(c) => gadget::media(c),
        Top::Vnc(VncCommand::Serve(a)) => vnc::serve(*a),
        Top::Vnc(VncCommand::Capture(a)) => vnc::capture(a),
        Top::Serve(a) => serve::run(*a),
    };
    if let Err(e) = r {
        // A closed stdout (`kvmio nbd info … | head`) is how pipelines end, not an error.
        let stdout_closed = e
            .chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            && std::io::Write::flush(&mut std::io::stdout()).is_err();
        if !stdout_closed {
            eprintln!("kvmio: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        // Defaults parse with their value parsers, names are unique, and so on.
        <crate::args::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
