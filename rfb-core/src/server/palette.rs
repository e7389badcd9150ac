//! The colour table ZRLE tiles and Tight pieces are counted into (`alloc`): open addressing
//! over `SLOTS` slots (a power of two, well above `MAX`), at most `MAX` colours (≤ 256) in the
//! order they were first seen.

const NO_ENTRY: u16 = u16::MAX;

pub(crate) struct Palette<const SLOTS: usize, const MAX: usize> {
    /// Index into `colours` of the colour in `keys[s]`, or `NO_ENTRY`.
    slots: [u16; SLOTS],
    keys: [u32; SLOTS],
    colours: [u32; MAX],
    len: usize,
}

impl<const SLOTS: usize, const MAX: usize> Palette<SLOTS, MAX> {
    const SHIFT: u32 = 32 - SLOTS.trailing_zeros();

    pub(crate) fn new() -> Self {
        Self {
            slots: [NO_ENTRY; SLOTS],
            keys: [0; SLOTS],
            colours: [0; MAX],
            len: 0,
        }
    }

    /// Forgets every colour.
    pub(crate) fn clear(&mut self) {
        self.slots = [NO_ENTRY; SLOTS];
        self.len = 0;
    }

    #[inline]
    fn slot_of(p: u32) -> usize {
        (p.wrapping_mul(0x9e37_79b1) >> Self::SHIFT) as usize
    }

    /// The index of `p`, which is added if it is new and fewer than `limit` (≤ `MAX`) colours
    /// are known; `None` when it would be one too many.
    #[inline]
    pub(crate) fn insert(&mut self, p: u32, limit: usize) -> Option<u8> {
        let mut s = Self::slot_of(p);
        loop {
            let e = self.slots[s];
            if e == NO_ENTRY {
                if self.len >= limit.min(MAX) {
                    return None;
                }
                self.slots[s] = self.len as u16;
                self.keys[s] = p;
                self.colours[self.len] = p;
                self.len += 1;
                return Some((self.len - 1) as u8);
            }
            if self.keys[s] == p {
                return Some(e as u8);
            }
            s = (s + 1) & (SLOTS - 1);
        }
    }

    /// The index of `p`, which must be in the table.
    #[inline]
    pub(crate) fn index(&self, p: u32) -> u8 {
        let mut s = Self::slot_of(p);
        loop {
            if self.slots[s] != NO_ENTRY && self.keys[s] == p {
                return self.slots[s] as u8;
            }
            s = (s + 1) & (SLOTS - 1);
        }
    }

    /// How many colours are known.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The colours, by index.
    pub(crate) fn colours(&self) -> &[u32] {
        &self.colours[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_keep_their_first_index_and_the_limit_holds() {
        let mut p = Palette::<16, 4>::new();
        assert_eq!(p.insert(7, 3), Some(0));
        assert_eq!(p.insert(9, 3), Some(1));
        assert_eq!(p.insert(7, 3), Some(0));
        assert_eq!(p.insert(1, 3), Some(2));
        assert_eq!(p.insert(5, 3), None);
        assert_eq!(p.insert(9, 3), Some(1));
        assert_eq!((p.len(), p.colours()), (3, &[7, 9, 1][..]));
        assert_eq!(p.index(1), 2);
        p.clear();
        assert_eq!((p.len(), p.insert(5, 4)), (0, Some(0)));
    }
}
