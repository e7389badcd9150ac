//! The output buffer a session writes into: reused without zeroing, with file ranges queued
//! between its bytes for `sendfile`.

use std::fs::File;
use std::sync::Arc;

/// Bytes of a file to send right after the buffer's first `at` bytes (zero-copy reads).
#[derive(Debug, Clone)]
pub struct FileSegment {
    /// Position in the buffer the file data follows.
    pub at: usize,
    /// The file.
    pub file: Arc<File>,
    /// Where in the file.
    pub offset: u64,
    /// How many bytes.
    pub len: usize,
}

/// An output buffer that is reused without being zeroed again: `tail(n)` hands out `n` writable
/// bytes at the end (a READ's data is read straight into it) and `commit` keeps them. Ranges of
/// files can be queued between the bytes ([`OutBuf::push_file`]); a plaintext transport sends
/// them with `sendfile`, without copying them through user space.
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    len: usize,
    files: Vec<FileSegment>,
    file_bytes: usize,
}

impl OutBuf {
    /// The buffered bytes (without file segments).
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Number of buffered bytes (without file segments).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes pending in all, file segments included.
    pub fn pending(&self) -> usize {
        self.len + self.file_bytes
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.files.is_empty()
    }

    /// The queued file segments.
    pub fn files(&self) -> &[FileSegment] {
        &self.files
    }

    /// `n` writable bytes after the produced ones (contents unspecified).
    pub fn tail(&mut self, n: usize) -> &mut [u8] {
        if self.buf.len() < self.len + n {
            // Grows by doubling (Vec's amortized growth), to no more than it has to.
            self.buf.resize(self.len + n, 0);
        }
        &mut self.buf[self.len..self.len + n]
    }

    /// Keeps `n` bytes of the last `tail`.
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Appends bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.tail(data.len()).copy_from_slice(data);
        self.commit(data.len());
    }

    /// Queues `len` bytes of `file` from `offset` after what is buffered now.
    pub fn push_file(&mut self, file: Arc<File>, offset: u64, len: usize) {
        self.file_bytes += len;
        self.files.push(FileSegment {
            at: self.len,
            file,
            offset,
            len,
        });
    }

    /// Reads every file segment into the buffer (for transports that must see the bytes, TLS).
    pub fn materialize(&mut self) -> std::io::Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        let files = std::mem::take(&mut self.files);
        let old = std::mem::take(&mut self.buf);
        let old_len = std::mem::replace(&mut self.len, 0);
        self.file_bytes = 0;
        let mut pos = 0;
        for f in &files {
            self.extend(&old[pos..f.at]);
            pos = f.at;
            let dst = self.tail(f.len);
            std::os::unix::fs::FileExt::read_exact_at(&*f.file, dst, f.offset)?;
            self.commit(f.len);
        }
        self.extend(&old[pos..old_len]);
        Ok(())
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.len = 0;
        self.files.clear();
        self.file_bytes = 0;
        if self.buf.len() > OUTBUF_KEEP {
            // One large reply (a 32 MiB READ) must not pin its buffer for the connection's life.
            self.buf = Vec::new();
        }
    }
}

/// An output buffer larger than this is freed once sent rather than kept for reuse.
pub(crate) const OUTBUF_KEEP: usize = 4 << 20;

/// Plaintext encrypted at a time: the ciphertext waiting to be sent stays below about this
/// much, however large the reply.
pub(crate) const TLS_BATCH: usize = 1 << 20;
