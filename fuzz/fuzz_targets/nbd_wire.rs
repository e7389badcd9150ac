//! Every NBD wire parser, and parse(emit(parse(x))) == parse(x) where both succeed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_core::wire::*;

fuzz_target!(|data: &[u8]| {
    let ext = data.first().is_some_and(|b| b & 1 == 1);
    let _ = GreetingRepr::parse(data);
    if let Ok(Some(h)) = OptionHeaderRepr::parse(data) {
        let mut b = [0u8; 16];
        h.emit(&mut b).unwrap();
        assert_eq!(OptionHeaderRepr::parse(&b), Ok(Some(h)));
    }
    let _ = OptionReplyHeaderRepr::parse(data);
    if let Ok(r) = InfoRequestRepr::parse(data) {
        let _ = r.requests().count();
    }
    if let Ok(r) = MetaContextRequestRepr::parse(data) {
        assert!(r.queries().count() <= r.count as usize);
    }
    if let Ok(i) = InfoReplyRepr::parse(data) {
        let mut b = vec![0u8; i.buffer_len()];
        i.emit(&mut b).unwrap();
        assert_eq!(InfoReplyRepr::parse(&b), Ok(i));
    }
    let _ = ServerReplyRepr::parse(data);
    let _ = MetaContextReplyRepr::parse(data);
    if let Ok(Some(r)) = RequestRepr::parse(data, ext) {
        let mut b = [0u8; 32];
        let n = r.emit(&mut b, ext).unwrap();
        assert_eq!(RequestRepr::parse(&b[..n], ext), Ok(Some(r)));
    }
    let _ = SimpleReplyRepr::parse(data);
    if let Ok(Some(c)) = ChunkHeaderRepr::parse(data) {
        let mut b = [0u8; 32];
        let n = c.emit(&mut b).unwrap();
        assert_eq!(ChunkHeaderRepr::parse(&b[..n]), Ok(Some(c)));
    }
    let _ = ErrorChunkRepr::parse(data, ext, !ext);
    let _ = ExtentsView::new(data, ext).iter().count();
    let _ = ExportNameReplyRepr::parse(data, ext);
});
