//! `tcp-pipe HOST:PORT`: connects to HOST:PORT and copies stdin to it and its bytes to stdout.
//! The appliance's guest-to-host forwards run it once per guest connection (QEMU's
//! `guestfwd=…-cmd:`), so that servers that speak first (an NBD server's greeting) see one
//! connection per guest connection, opened when the guest connects.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

fn main() {
    let addr = std::env::args().nth(1).expect("usage: tcp-pipe HOST:PORT");
    let sock = match TcpStream::connect(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcp-pipe: connect {addr}: {e}");
            std::process::exit(1);
        }
    };
    let _ = sock.set_nodelay(true);
    let mut up = sock.try_clone().expect("clone socket");
    let to_server = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = up.shutdown(Shutdown::Write);
    });
    let mut down = sock;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout.write_all(&buf[..n]).is_err() || stdout.flush().is_err() {
                    break;
                }
            }
        }
    }
    // The server closed: the guest's connection ends too (the stdin copy may be blocked).
    drop(to_server);
    std::process::exit(0);
}
