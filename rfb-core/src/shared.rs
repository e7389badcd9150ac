//! Message handling the client and the server share: cut text and fences travel both ways in
//! the same layout (only the cut-text message type differs), so sending, receiving and
//! answering them is written once, here.

use crate::error::{CommandError, Error, ProtocolError};
use crate::outq::{AppPayload, OutQueue};
use crate::wire::{CutTextHeaderRepr, CutTextLength, FenceRepr, fence_flags};

/// Queues a cut-text header (`message_type` 6 from the client, 3 from the server);
/// `poll_transmit` then asks the application to send the `len` bytes itself. `Extended` needs
/// the peer's extended-clipboard support.
pub(crate) fn queue_cut_text<const N: usize>(
    out: &mut OutQueue<N>,
    message_type: u8,
    len: CutTextLength,
    extended_clipboard: bool,
) -> Result<(), CommandError> {
    if let CutTextLength::Extended(n) = len
        && (!extended_clipboard || n == 0 || n > 1 << 31)
    {
        return Err(CommandError::InvalidArgument);
    }
    let h = CutTextHeaderRepr {
        message_type,
        length: len.to_wire(),
    };
    out.push_with_payload(
        CutTextHeaderRepr::LEN,
        AppPayload::CutText { len: len.len() },
        |b| h.emit(b),
    )
}

/// Queues a fence carrying `payload` (at most 64 bytes).
pub(crate) fn queue_fence<const N: usize>(
    out: &mut OutQueue<N>,
    flags: u32,
    payload: &[u8],
) -> Result<(), CommandError> {
    let mut p = heapless::Vec::new();
    p.extend_from_slice(payload)
        .map_err(|_| CommandError::InvalidArgument)?;
    let f = FenceRepr { flags, payload: p };
    out.push(f.buffer_len(), |b| f.emit(b))
}

/// A cut-text header from the peer: the announced length (`None` until the 8 bytes are at
/// hand). A length over `max` ends the connection.
pub(crate) fn cut_text_header(
    input: &[u8],
    extended_clipboard: bool,
    max: u32,
) -> Result<Option<CutTextLength>, Error> {
    let h = complete_or_wait!(
        CutTextHeaderRepr::parse(input),
        malformed => ProtocolError::Malformed,
        wait => None
    );
    let len = h.decode(extended_clipboard);
    if len.len() > max {
        return Err(ProtocolError::CutTextTooLong.into());
    }
    Ok(Some(len))
}

/// The next piece of a body of which `remaining` bytes are still to come: what `input` holds
/// of it, and how many bytes follow that piece (`None` while `input` is empty).
pub(crate) fn body_chunk(input: &[u8], remaining: u32) -> Option<(&[u8], u32)> {
    let n = input.len().min(remaining as usize);
    (n > 0).then(|| (&input[..n], remaining - n as u32))
}

/// The peer's answer to a fence we sent: its flags and our payload.
pub(crate) type FenceResponse<'i> = (u32, &'i [u8]);

/// A fence from the peer (type 248): a request is answered at once with the flags this crate
/// knows, minus the request bit, and the same payload; a response is handed back for the
/// application. Returns the bytes consumed: 0 while the message is
/// incomplete or the answer does not fit the queue yet.
pub(crate) fn receive_fence<'i, const N: usize>(
    input: &'i [u8],
    out: &mut OutQueue<N>,
) -> Result<(usize, Option<FenceResponse<'i>>), Error> {
    let m =
        complete_or_wait!(FenceRepr::parse(input), malformed => ProtocolError::FencePayloadTooLong);
    let len = m.buffer_len();
    if m.flags & fence_flags::REQUEST == 0 {
        let data = &input[FenceRepr::HEADER_LEN..len];
        return Ok((len, Some((m.flags, data))));
    }
    let reply = FenceRepr {
        flags: m.flags & fence_flags::KNOWN & !fence_flags::REQUEST,
        payload: m.payload,
    };
    if out.push(reply.buffer_len(), |b| reply.emit(b)).is_err() {
        // No room for the answer yet: wait (consume nothing) until the driver drained.
        return Ok((0, None));
    }
    Ok((len, None))
}
