//! The small output queue both state machines serialise their messages into.

use crate::error::{CommandError, InsufficientSize};

/// Bulk data the application sends itself right after the bytes of a [`Transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AppPayload {
    /// The cut text (or extended-clipboard message) announced by the header just written:
    /// exactly `len` bytes.
    CutText {
        /// Bytes the application must send.
        len: u32,
    },
}

/// What `poll_transmit` wrote.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Transmit {
    /// Send `buf[..len]`.
    pub len: usize,
    /// Then send the application's own bytes described here (nothing else may come between).
    pub then: Option<AppPayload>,
}

/// Whole serialized messages waiting for `poll_transmit`.
#[derive(Debug, Clone)]
pub(crate) struct OutQueue<const N: usize> {
    buf: [u8; N],
    len: u16,
    /// End offsets of the queued messages.
    ends: heapless::Vec<u16, 24>,
    /// An application payload follows the message ending at this offset.
    payload: Option<(u16, AppPayload)>,
}

impl<const N: usize> OutQueue<N> {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
            ends: heapless::Vec::new(),
            payload: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0 && self.payload.is_none()
    }

    pub(crate) fn free(&self) -> usize {
        if self.ends.is_full() {
            0
        } else {
            N - usize::from(self.len)
        }
    }

    /// Whether `bytes` in up to `messages` messages fit.
    pub(crate) fn has_room(&self, bytes: usize, messages: usize) -> bool {
        self.ends.len() + messages <= self.ends.capacity() && bytes <= N - usize::from(self.len)
    }

    /// Appends one message of `n` bytes written by `f`, or fails with `QueueFull`.
    pub(crate) fn push(&mut self, n: usize, f: impl FnOnce(&mut [u8])) -> Result<(), CommandError> {
        if n > self.free() {
            return Err(CommandError::QueueFull);
        }
        let start = usize::from(self.len);
        f(&mut self.buf[start..start + n]);
        self.len += n as u16;
        // Cannot fail: `free()` is zero when `ends` is full.
        let _ = self.ends.push(self.len);
        Ok(())
    }

    /// Appends a message an input step queues. `handle_input` checks before every step that
    /// the most a step queues fits ([`has_room`](Self::has_room)), so this does not fail.
    pub(crate) fn push_reserved(&mut self, n: usize, f: impl FnOnce(&mut [u8])) {
        let r = self.push(n, f);
        debug_assert!(r.is_ok(), "an input step queued more than it reserved");
    }

    /// Appends a message followed by an application payload (one at a time); `pop_into` stops
    /// after it so that the application's bytes come right behind it.
    pub(crate) fn push_with_payload(
        &mut self,
        n: usize,
        p: AppPayload,
        f: impl FnOnce(&mut [u8]),
    ) -> Result<(), CommandError> {
        if self.payload.is_some() {
            return Err(CommandError::QueueFull);
        }
        self.push(n, f)?;
        self.payload = Some((self.len, p));
        Ok(())
    }

    /// Copies as many whole messages as fit into `out`.
    pub(crate) fn pop_into(
        &mut self,
        out: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        let Some(&first) = self.ends.first() else {
            return Ok(None);
        };
        if usize::from(first) > out.len() {
            return Err(InsufficientSize {
                required: usize::from(first),
            });
        }
        let mut take = 0usize;
        let mut msgs = 0usize;
        let mut then = None;
        for &end in self.ends.iter() {
            if usize::from(end) > out.len() {
                break;
            }
            take = usize::from(end);
            msgs += 1;
            if let Some((at, p)) = self.payload
                && at == end
            {
                then = Some(p);
                break;
            }
        }
        out[..take].copy_from_slice(&self.buf[..take]);
        self.buf.copy_within(take..usize::from(self.len), 0);
        self.len -= take as u16;
        let rest: heapless::Vec<u16, 24> = self
            .ends
            .iter()
            .skip(msgs)
            .map(|e| e - take as u16)
            .collect();
        self.ends = rest;
        if then.is_some() {
            self.payload = None;
        } else if let Some((at, p)) = self.payload {
            self.payload = Some((at - take as u16, p));
        }
        Ok(Some(Transmit { len: take, then }))
    }
}
