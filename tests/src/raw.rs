//! A hand-driven NBD client for crafted and malformed bytes, over any `Read + Write` stream
//! (TCP, or TLS from [`crate::tlsio`]). Messages are built and parsed with the `nbd_core::wire`
//! representations; everything else (order, lengths, junk) is up to the test.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nbd_core::wire::{
    ChunkHeaderRepr, ClientFlags, ClientFlagsRepr, CommandFlags, CommandType, GreetingRepr,
    HandshakeFlags, InfoRequestRepr, InfoType, MetaContextRequestRepr, OptionHeaderRepr,
    OptionReplyHeaderRepr, OptionType, ReplyType, RequestRepr, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC, ServerHello, SimpleReplyRepr,
};

/// Read and write timeout of raw connections: a server that neither answers nor closes
/// within it fails the test.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A raw NBD connection.
pub struct Nbd<S> {
    /// The stream.
    pub s: S,
}

/// One option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptReply {
    /// The option it answers.
    pub option: OptionType,
    /// The reply type.
    pub reply: ReplyType,
    /// The reply data.
    pub data: Vec<u8>,
}

impl OptReply {
    /// Whether this ends the option (ACK or an error).
    pub fn is_final(&self) -> bool {
        self.reply == ReplyType::Ack || self.reply.is_error()
    }

    /// The data as text (error messages).
    pub fn message(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// For `NBD_REP_INFO` / `NBD_INFO_EXPORT`: size and transmission flags.
    pub fn export_info(&self) -> Option<(u64, u16)> {
        if self.reply != ReplyType::Info || self.data.len() != 12 || self.data[..2] != [0, 0] {
            return None;
        }
        let size = u64::from_be_bytes(self.data[2..10].try_into().ok()?);
        let flags = u16::from_be_bytes(self.data[10..12].try_into().ok()?);
        Some((size, flags))
    }
}

/// A reply in the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A simple reply (READ data, if any, follows: read it with [`Nbd::read_vec`]).
    Simple(SimpleReplyRepr),
    /// A structured reply chunk with its payload.
    Chunk(ChunkHeaderRepr, Vec<u8>),
}

/// Connects to 127.0.0.1:`port` with [`IO_TIMEOUT`] on reads and writes.
pub fn connect(port: u16) -> Nbd<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    Nbd { s }
}

/// The bytes of an option: header and data.
pub fn option_bytes(opt: OptionType, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; OptionHeaderRepr::LEN];
    OptionHeaderRepr {
        option: opt,
        length: u32::try_from(data.len()).expect("option length"),
    }
    .emit(&mut v)
    .expect("emit");
    v.extend_from_slice(data);
    v
}

/// An option header announcing `length` bytes of data (none follow).
pub fn option_header(opt: OptionType, length: u32) -> Vec<u8> {
    let mut v = vec![0u8; OptionHeaderRepr::LEN];
    OptionHeaderRepr {
        option: opt,
        length,
    }
    .emit(&mut v)
    .expect("emit");
    v
}

/// INFO/GO data for `name` with information requests `infos`.
pub fn go_data(name: &str, infos: &[InfoType]) -> Vec<u8> {
    let mut v = vec![0u8; InfoRequestRepr::data_len(name, infos)];
    InfoRequestRepr::emit_data(name, infos, &mut v).expect("emit");
    v
}

/// LIST/SET_META_CONTEXT data.
pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = vec![0u8; MetaContextRequestRepr::data_len(name, queries)];
    MetaContextRequestRepr::emit_data(name, queries, &mut v).expect("emit");
    v
}

/// The bytes of a compact request header.
pub fn request_bytes(
    cmd: CommandType,
    flags: CommandFlags,
    cookie: u64,
    offset: u64,
    len: u32,
) -> Vec<u8> {
    let mut v = vec![0u8; RequestRepr::COMPACT_LEN];
    RequestRepr {
        flags,
        command: cmd,
        cookie,
        offset,
        length: u64::from(len),
    }
    .emit(&mut v, false)
    .expect("emit");
    v
}

/// The standard client flags: `FIXED_NEWSTYLE | NO_ZEROES`.
pub const CLIENT_FLAGS: u32 = ClientFlags::FIXED_NEWSTYLE.bits() | ClientFlags::NO_ZEROES.bits();

/// Whether an I/O error means the peer closed or reset the connection.
pub fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

impl<S: Read + Write> Nbd<S> {
    /// Wraps a stream.
    pub fn new(s: S) -> Self {
        Self { s }
    }

    /// Sends bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes)?;
        self.s.flush()
    }

    /// Reads exactly `n` bytes.
    pub fn read_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v)?;
        Ok(v)
    }

    /// Reads the newstyle greeting and returns the handshake flags.
    pub fn greeting(&mut self) -> io::Result<HandshakeFlags> {
        let b = self.read_vec(GreetingRepr::LEN)?;
        match GreetingRepr::parse(&b) {
            Ok(Some(ServerHello::Newstyle(g))) => Ok(g.flags),
            other => Err(io::Error::other(format!(
                "bad greeting {other:?}: {b:02x?}"
            ))),
        }
    }

    /// Sends the client flags.
    pub fn client_flags(&mut self, flags: u32) -> io::Result<()> {
        let mut b = [0u8; ClientFlagsRepr::LEN];
        ClientFlagsRepr {
            flags: ClientFlags::from_bits_retain(flags),
        }
        .emit(&mut b)
        .expect("emit");
        self.send(&b)
    }

    /// Greeting (must be fixed newstyle) and the standard client flags.
    pub fn handshake(&mut self) -> io::Result<()> {
        let f = self.greeting()?;
        assert!(
            f.contains(HandshakeFlags::FIXED_NEWSTYLE),
            "server does not offer fixed newstyle: {f:?}"
        );
        self.client_flags(CLIENT_FLAGS)
    }

    /// Sends an option.
    pub fn send_option(&mut self, opt: OptionType, data: &[u8]) -> io::Result<()> {
        self.send(&option_bytes(opt, data))
    }

    /// Reads one option reply.
    pub fn reply(&mut self) -> io::Result<OptReply> {
        let h = self.read_vec(OptionReplyHeaderRepr::LEN)?;
        let h = match OptionReplyHeaderRepr::parse(&h) {
            Ok(Some(h)) => h,
            other => {
                return Err(io::Error::other(format!(
                    "bad option reply header {other:?}: {h:02x?}"
                )));
            }
        };
        assert!(
            h.length <= 1 << 20,
            "option reply of {} bytes is absurd",
            h.length
        );
        let data = self.read_vec(h.length as usize)?;
        Ok(OptReply {
            option: h.option,
            reply: h.reply,
            data,
        })
    }

    /// Reads option replies up to and including the final one (ACK or error).
    pub fn replies(&mut self) -> io::Result<Vec<OptReply>> {
        let mut v = Vec::new();
        loop {
            let r = self.reply()?;
            let last = r.is_final();
            v.push(r);
            if last {
                return Ok(v);
            }
        }
    }

    /// Sends an option and reads its replies.
    pub fn option(&mut self, opt: OptionType, data: &[u8]) -> io::Result<Vec<OptReply>> {
        self.send_option(opt, data)?;
        self.replies()
    }

    /// `NBD_OPT_GO` for `name` (no information requests); on success returns the export's
    /// size and transmission flags, else the final error reply.
    pub fn go(&mut self, name: &str) -> io::Result<Result<(u64, u16), OptReply>> {
        let replies = self.option(OptionType::Go, &go_data(name, &[]))?;
        let last = replies.last().expect("at least one reply").clone();
        if last.reply != ReplyType::Ack {
            return Ok(Err(last));
        }
        let info = replies
            .iter()
            .find_map(OptReply::export_info)
            .expect("GO succeeded without NBD_INFO_EXPORT");
        Ok(Ok(info))
    }

    /// [`go`](Self::go) that must succeed.
    #[track_caller]
    pub fn go_ok(&mut self, name: &str) -> (u64, u16) {
        match self.go(name) {
            Ok(Ok(x)) => x,
            other => panic!("GO {name:?} failed: {other:?}"),
        }
    }

    /// Sends a compact request header and `payload`.
    pub fn request(
        &mut self,
        cmd: CommandType,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut b = request_bytes(cmd, CommandFlags::empty(), cookie, offset, len);
        b.extend_from_slice(payload);
        self.send(&b)
    }

    /// Reads a transmission reply: a simple reply header, or a whole structured chunk.
    pub fn any_reply(&mut self) -> io::Result<Reply> {
        let magic = self.read_vec(4)?;
        let m = u32::from_be_bytes(magic.clone().try_into().expect("4 bytes"));
        if m == SIMPLE_REPLY_MAGIC {
            let mut b = magic;
            b.extend(self.read_vec(SimpleReplyRepr::LEN - 4)?);
            let r = SimpleReplyRepr::parse(&b)
                .ok()
                .flatten()
                .expect("simple reply");
            return Ok(Reply::Simple(r));
        }
        if m == STRUCTURED_REPLY_MAGIC {
            let mut b = magic;
            b.extend(self.read_vec(ChunkHeaderRepr::STRUCTURED_LEN - 4)?);
            let h = ChunkHeaderRepr::parse(&b)
                .ok()
                .flatten()
                .expect("chunk header");
            let payload = self.read_vec(usize::try_from(h.length).expect("len"))?;
            return Ok(Reply::Chunk(h, payload));
        }
        Err(io::Error::other(format!(
            "unexpected reply magic {m:#010x}"
        )))
    }

    /// READ of `len` bytes at `offset` over simple replies: returns the data or the error.
    pub fn simple_read(
        &mut self,
        cookie: u64,
        offset: u64,
        len: u32,
    ) -> io::Result<Result<Vec<u8>, u32>> {
        self.request(CommandType::Read, cookie, offset, len, &[])?;
        match self.any_reply()? {
            Reply::Simple(r) => {
                assert_eq!(r.cookie, cookie, "cookie of the reply");
                if r.error != 0 {
                    return Ok(Err(r.error));
                }
                Ok(Ok(self.read_vec(len as usize)?))
            }
            other => Err(io::Error::other(format!(
                "structured reply {other:?} where a simple reply was due"
            ))),
        }
    }

    /// WRITE over simple replies: returns the error value (0: success).
    pub fn simple_write(&mut self, cookie: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let len = u32::try_from(data.len()).expect("len");
        self.request(CommandType::Write, cookie, offset, len, data)?;
        match self.any_reply()? {
            Reply::Simple(r) => {
                assert_eq!(r.cookie, cookie, "cookie of the reply");
                Ok(r.error)
            }
            other => Err(io::Error::other(format!(
                "structured reply {other:?} where a simple reply was due"
            ))),
        }
    }

    /// Reads until the peer closes; returns what arrived before. A reset counts as a close; a
    /// timeout ([`IO_TIMEOUT`]) is an error.
    pub fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return Ok(v),
                Ok(n) => {
                    v.extend_from_slice(&buf[..n]);
                    assert!(v.len() < 64 << 20, "peer keeps sending");
                }
                Err(e) if is_closed_error(&e) => return Ok(v),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Panics unless the peer closes the connection (within [`IO_TIMEOUT`]) without sending
    /// anything more.
    #[track_caller]
    pub fn expect_closed(&mut self, what: &str) {
        match self.read_to_close() {
            Ok(v) if v.is_empty() => {}
            Ok(v) => panic!(
                "{what}: server sent {} more bytes before closing: {:02x?}",
                v.len(),
                &v[..v.len().min(64)]
            ),
            Err(e) => panic!("{what}: server did not close the connection: {e}"),
        }
    }
}
