//! Raw RFB clients for load: version exchange, security None (or the server's refusal and
//! its reason), ClientInit, one full FramebufferUpdateRequest and the whole update read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How one client ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served: the framebuffer size and the bytes of the first update.
    Served {
        /// Width × height.
        size: (u16, u16),
        /// Bytes of the update.
        bytes: usize,
    },
    /// Refused with this reason.
    Refused(String),
}

async fn read_u32(s: &mut tokio::net::TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await?;
    Ok(u32::from_be_bytes(b))
}

async fn reason(s: &mut tokio::net::TcpStream) -> Result<String> {
    let n = read_u32(s).await?;
    if n > 4096 {
        return Err(anyhow!("a refusal reason of {n} bytes"));
    }
    let mut r = vec![0u8; n as usize];
    s.read_exact(&mut r).await?;
    Ok(String::from_utf8_lossy(&r).into_owned())
}

/// One client against `addr` (RFB 3.8, security None, the default 32-bit pixel format, Raw).
/// Returns the connection too, still open.
pub async fn client(addr: &str) -> Result<(Outcome, tokio::net::TcpStream)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut v = [0u8; 12];
    s.read_exact(&mut v).await?;
    if &v[..4] != b"RFB " {
        return Err(anyhow!("not an RFB server: {v:02x?}"));
    }
    s.write_all(b"RFB 003.008\n").await?;
    let n = s.read_u8().await?;
    if n == 0 {
        let why = reason(&mut s).await?;
        return Ok((Outcome::Refused(why), s));
    }
    let mut types = vec![0u8; usize::from(n)];
    s.read_exact(&mut types).await?;
    if !types.contains(&1) {
        return Err(anyhow!("security None not offered: {types:?}"));
    }
    s.write_all(&[1]).await?;
    if read_u32(&mut s).await? != 0 {
        let why = reason(&mut s).await?;
        return Ok((Outcome::Refused(why), s));
    }
    s.write_all(&[1]).await?; // ClientInit, shared
    let mut init = [0u8; 24];
    s.read_exact(&mut init).await?;
    let (w, h) = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    let bpp = usize::from(init[4]) / 8;
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]);
    let mut name = vec![0u8; name_len.min(4096) as usize];
    s.read_exact(&mut name).await?;
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend(w.to_be_bytes());
    req.extend(h.to_be_bytes());
    s.write_all(&req).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != 0 {
        return Err(anyhow!("message type {} instead of an update", head[0]));
    }
    let rects = u16::from_be_bytes([head[2], head[3]]);
    let mut bytes = 4;
    for _ in 0..rects {
        let mut r = [0u8; 12];
        s.read_exact(&mut r).await?;
        let (rw, rh) = (
            usize::from(u16::from_be_bytes([r[4], r[5]])),
            usize::from(u16::from_be_bytes([r[6], r[7]])),
        );
        let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
        if enc != 0 {
            return Err(anyhow!("encoding {enc} where Raw was due"));
        }
        let mut px = vec![0u8; rw * rh * bpp];
        s.read_exact(&mut px).await?;
        bytes += 12 + px.len();
    }
    Ok((
        Outcome::Served {
            size: (w, h),
            bytes,
        },
        s,
    ))
}

/// The outcome of a VNC burst.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VncReport {
    /// Clients started.
    pub clients: usize,
    /// Served an update.
    pub served: usize,
    /// Refused, by reason.
    pub refused: BTreeMap<String, usize>,
    /// Neither: failed or timed out (the first few messages in `examples`).
    pub lost: usize,
    /// Failure messages.
    pub examples: Vec<String>,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl std::fmt::Display for VncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} VNC clients: {} served, {} refused {:?}, {} lost, in {:.2} s",
            self.clients,
            self.served,
            self.refused.values().sum::<usize>(),
            self.refused,
            self.lost,
            self.seconds
        )
    }
}

/// `clients` RFB clients at once against `addr`, each within `deadline`. Every connection
/// stays open until all clients are done, so a connection cap stays reached.
pub async fn burst(addr: &str, clients: usize, deadline: Duration) -> VncReport {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let addr = addr.to_string();
            tokio::spawn(async move {
                match tokio::time::timeout(deadline, client(&addr)).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow!("no answer within {deadline:?}")),
                }
            })
        })
        .collect();
    let mut r = VncReport {
        clients,
        ..Default::default()
    };
    let mut open = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok((outcome, stream))) => {
                open.push(stream);
                match outcome {
                    Outcome::Served { .. } => r.served += 1,
                    Outcome::Refused(why) => *r.refused.entry(why).or_default() += 1,
                }
            }
            Ok(Err(e)) => {
                r.lost += 1;
                if r.examples.len() < 5 {
                    r.examples.push(format!("{e:#}"));
                }
            }
            Err(e) => {
                r.lost += 1;
                r.examples.push(format!("task: {e}"));
            }
        }
    }
    r.seconds = start.elapsed().as_secs_f64();
    drop(open);
    r
}
