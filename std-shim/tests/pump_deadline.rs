//! Regression test: a timer the session sets while processing input must bound the very next
//! read. (The loops used to read the deadline before the step that processed the input, so a
//! VNC session that deferred an update to its frame timer waited for input forever.)

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::Result;
use std_shim::io::blocking::{Transport, run_blocking};
use std_shim::pump::{Control, OutBuf, PeerInfo, Processed, Pump, Session};

/// Arms a timer when the first byte arrives; closes once the timer fired.
#[derive(Default)]
struct TimerSession {
    timer: Option<Instant>,
    fired: bool,
}

impl Session for TimerSession {
    fn process(&mut self, input: &[u8], _out: &mut OutBuf) -> Result<Processed> {
        if self.fired {
            return Ok(Processed {
                consumed: input.len(),
                control: Control::Close,
            });
        }
        if !input.is_empty() && self.timer.is_none() {
            self.timer = Some(Instant::now() + Duration::from_millis(30));
        }
        Ok(Processed {
            consumed: input.len(),
            control: Control::Continue,
        })
    }
    fn tls_established(&mut self, _: &PeerInfo) -> Result<()> {
        Ok(())
    }
    fn eof(&mut self) -> Result<()> {
        anyhow::bail!("end of input before the timer fired")
    }
    fn deadline(&self) -> Option<Instant> {
        self.timer.filter(|_| !self.fired)
    }
    fn timeout(&mut self, now: Instant) {
        if self.timer.is_some_and(|t| now >= t) {
            self.fired = true;
        }
    }
}

/// One byte of input, then nothing: a read without a timeout would block forever (here: fail).
struct OneByte {
    sent: bool,
    timeout: Option<Duration>,
}

impl Read for OneByte {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.sent {
            self.sent = true;
            buf[0] = b'x';
            return Ok(1);
        }
        match self.timeout {
            Some(t) => {
                std::thread::sleep(t);
                Err(io::ErrorKind::WouldBlock.into())
            }
            None => Err(io::Error::other(
                "read without a deadline would block forever",
            )),
        }
    }
}

impl Write for OneByte {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for OneByte {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.timeout = t;
        Ok(())
    }
}

#[test]
fn timer_set_while_processing_bounds_the_next_read() {
    let mut pump = Pump::new(TimerSession::default(), 1024, None);
    let mut io = OneByte {
        sent: false,
        timeout: None,
    };
    run_blocking(&mut pump, &mut io).expect("the timer fired and the session closed");
    assert!(pump.session().fired);
}
